"""The three estimates of log p(x) against probabilistic PCA, whose log p(x) is exact.

Data are drawn from the model itself, so log p(x_n) = LinearGaussian.log_marginal
is known for every point; each tolerance is a multiple of a standard error
measured over the N points (explained where used).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.build import build_vae, with_options
from pyro_vae.config import ModelConfig
from pyro_vae.evaluate import (Estimate, bits_per_dim, evaluate, log_importance_weights,
                               log_mean_exp, psis_diagnostics)
from pyro_vae.models import LinearGaussian

D, N = 8, 200


def ppca(latent_dim: int, sigma: float = 0.5, seed: int = 0):
    """A pPCA ``VAE`` from ``build_vae`` with W ~ N(0, 1) (so z carries real signal), and its closed form."""
    cfg = with_options(ModelConfig(latent_dim=latent_dim, hidden_sizes=(8,), decoder="linear",
                                   likelihood="gaussian-fixed"), sigma=sigma)
    model, _ = build_vae(cfg, D, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(torch.randn(D, latent_dim, generator=gen))
        model.decoder.linear.bias.copy_(0.5 * torch.randn(D, generator=gen))
    return model, LinearGaussian.of(model)


def draw(lg: LinearGaussian, n: int = N, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return lg.marginal().sample((n,))


def posterior_guide(lg: LinearGaussian, shift: float = 0.0, widen: float = 1.0):
    """A user-written guide: p(z | x) exactly (full covariance), or shifted and widened
    into a diagonal Gaussian that is a good but imperfect proposal."""

    def guide(x):
        mean, cov = lg.posterior(x)
        with pyro.plate("data", x.shape[0]):
            if shift == 0.0 and widen == 1.0:
                return pyro.sample("z", dist.MultivariateNormal(mean, covariance_matrix=cov))
            scale = widen * cov.diagonal().sqrt()
            return pyro.sample("z", dist.Normal(mean + shift * scale, scale).to_event(1))

    return guide


def user_ppca_model(lg: LinearGaussian, nuisance: bool = False):
    """The same pPCA story written by a user as a plain function; optionally with a
    second latent u that x does not depend on (and that the guide will not propose)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([lg.W.shape[1]]).to_event(1))
            if nuisance:
                pyro.sample("u", dist.Normal(3.0, 0.1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    return model


@pytest.mark.parametrize("which", ["vae", "user", "user-with-unproposed-latent"])
def test_exact_posterior_gives_constant_weights_equal_to_log_marginal(which):
    # With q = p(z | x), log p(x, z) − log q(z | x) = log p(x) for every z: each of the
    # K·N weights must equal the closed form, up to float32 rounding of ~10-nat terms.
    # A latent the guide leaves out is drawn from its prior, which cancels exactly.
    model, lg = ppca(2)
    x = draw(lg, 50)
    m = model if which == "vae" else user_ppca_model(lg, nuisance=which != "user")
    log_w = log_importance_weights(m, posterior_guide(lg), x, 300, particle_chunk=64, point_chunk=16)
    assert log_w.shape == (300, 50)
    torch.testing.assert_close(log_w, lg.log_marginal(x).expand(300, 50), atol=2e-4, rtol=1e-5)


def test_prior_weights_are_the_likelihood_and_chunking_does_not_matter():
    model, lg = ppca(2)
    x = draw(lg, 30)
    torch.manual_seed(3)
    a = log_importance_weights(model, None, x, 100, particle_chunk=100, point_chunk=30)
    torch.manual_seed(3)
    b = log_importance_weights(user_ppca_model(lg), None, x, 100, particle_chunk=100, point_chunk=30)
    torch.testing.assert_close(a, b)  # same draws, same story, same numbers
    torch.manual_seed(4)
    c = log_importance_weights(model, None, x, 100, particle_chunk=7, point_chunk=11)
    # Different chunking → different draws, but the same distribution of log p(x|z) per point.
    assert (a.mean(0) - c.mean(0)).abs().mean() < 4 * (a.std(0) / math.sqrt(100)).mean()


def test_iwae_converges_to_exact_log_marginal():
    model, lg = ppca(2)
    x = draw(lg)
    exact = lg.log_marginal(x)
    result = evaluate(model, posterior_guide(lg, shift=0.5, widen=1.5), x, num_samples=5000, seed=0)
    err = result.iwae.per_point - exact.double()
    # Delta method: IWAE_K − log p ≈ p̂/p − 1, mean-zero with variance Var(w/p)/K per point,
    # plus a bias −Var(w/p)/(2K) ≈ 1e-4 here, far below the standard error of the mean of
    # err over N points (~1e-3); so |mean err| must sit within 4 standard errors.
    se = err.std() / math.sqrt(N)
    assert abs(float(err.mean())) < 4 * float(se) + 1e-4
    k1 = result.curve.mean["iwae"][0] - float(exact.mean())
    assert k1 < -0.05  # at K = 1 the bound is visibly loose, so convergence is real
    assert result.psis.fraction_above < 0.1  # a good proposal is recognised as one


def test_elbo_below_iwae_below_log_marginal_and_iwae_monotone_in_k():
    model, lg = ppca(2)
    x = draw(lg)
    exact = float(lg.log_marginal(x).double().mean())
    ks = (1, 4, 16, 64, 256)
    result = evaluate(model, posterior_guide(lg, shift=1.0, widen=2.0), x, num_samples=256, ks=ks,
                      seed=1)
    iwae = result.curve.mean["iwae"]
    # E[IWAE_1] = ELBO, and every K > 1 is strictly above it (per point by Jensen, given the draws).
    assert result.elbo.mean < min(iwae[1:]) and result.elbo.mean < result.iwae.mean
    # The bounds: ELBO ≤ IWAE_K ≤ log p(x) in expectation; a sample mean may exceed log p(x)
    # only by noise, so allow 3 standard errors of the IWAE mean over points.
    assert result.iwae.mean < exact + 3 * result.iwae.stderr
    # Monotone: each K×4 step must raise the mean (paired over the same points and draws,
    # the increments here are several standard errors of the per-point spread).
    assert all(b > a for a, b in zip(iwae, iwae[1:])), iwae


def test_prior_monte_carlo_is_unbiased_on_the_linear_scale():
    model, lg = ppca(1)
    x = draw(lg)
    result = evaluate(model, posterior_guide(lg), x, num_samples=2000, seed=2)
    ratio = torch.exp(result.prior_mc.per_point - lg.log_marginal(x).double())
    # E[p̂(x)] = p(x), so the ratios average to 1; their standard error over N points gives
    # the tolerance (4 s.e.: a false alarm once in ~16,000 runs).
    assert abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std() / math.sqrt(N))


def exact_relative_variance(lg: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """Var_z[p(x|z)] / p(x)² for z ~ p(z), per point ``[N]``.

    N(x; μ, σ²I)² = (4πσ²)^(−D/2) N(x; μ, σ²I/2), so E_z[p(x|z)²] = (4πσ²)^(−D/2) N(x; b, WWᵀ + σ²I/2).
    """
    cov = lg.W @ lg.W.T + lg.sigma**2 / 2 * torch.eye(D)
    log_second = -D / 2 * math.log(4 * math.pi * lg.sigma**2) + dist.MultivariateNormal(
        lg.b, covariance_matrix=cov).log_prob(x)
    return torch.exp(log_second - 2 * lg.log_marginal(x)) - 1


def test_prior_monte_carlo_relative_variance_grows_sharply_with_latent_dim():
    exact, empirical = [], []
    for d in (1, 2, 4):
        model, lg = ppca(d)
        x = draw(lg)
        torch.manual_seed(5)
        v = log_importance_weights(model, None, x, 2000)
        empirical.append(float(torch.exp(v - lg.log_marginal(x)).var(0).median()))
        exact.append(float(exact_relative_variance(lg, x).median()))
    # Where it is estimable (d ≤ 2) the sample relative variance of p(x|z)/p(x) over 2000
    # draws matches the closed form to within 25% (median over 200 points).
    for e, m in zip(exact[:2], empirical[:2]):
        assert abs(m / e - 1) < 0.25, (exact, empirical)
    # And it explodes with d: each doubling multiplies it (by ~4× and ~40× here).
    assert exact[1] > 3 * exact[0] and exact[2] > 20 * exact[1], exact
    assert empirical[1] > 3 * empirical[0] and empirical[2] > 5 * empirical[1], empirical


def test_global_latent_is_refused():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(ValueError, match="'mu'.*local to the data plate"):
        log_importance_weights(model, None, torch.zeros(5), 4)


def test_estimate_units_and_psis_on_known_weights():
    est = Estimate.of("x", torch.tensor([-10.0, -12.0]), data_dim=4)
    assert est.mean == -11.0 and est.stderr == pytest.approx(1.0)
    assert est.bits_per_dim == pytest.approx(11.0 / (4 * math.log(2)))  # −log p / (D ln 2) > 0
    assert bits_per_dim(torch.tensor(0.0), 3) == 0
    torch.testing.assert_close(log_mean_exp(torch.log(torch.tensor([[1.0], [3.0]]))),
                               torch.log(torch.tensor([2.0])))
    torch.manual_seed(0)
    equal = torch.zeros(1000, 3)  # equal weights: ESS = K exactly and a light tail
    heavy = torch.distributions.Pareto(1.0, 0.8).sample((4000, 20)).log()  # tail shape 1/0.8
    light = torch.randn(4000, 20) * 0.3  # lognormal weights with small σ: k̂ well below 0.5
    p_eq, p_heavy, p_light = (psis_diagnostics(w) for w in (equal, heavy, light))
    torch.testing.assert_close(p_eq.ess, torch.ones(3, dtype=torch.float64))
    assert p_eq.fraction_above == 0.0 and bool((p_eq.khat == -math.inf).all())
    # k̂ estimates the tail shape ξ = 1.25 of a Pareto(α = 0.8); the mean of 20 estimates
    # (each from ~190 tail draws, sd ≈ 0.15 including psislw's shrinkage toward 0.5)
    # lies within 0.25 of it, and PSIS flags every column.
    assert p_heavy.fraction_above == 1.0 and abs(float(p_heavy.khat.mean()) - 1.25) < 0.25
    assert p_light.fraction_above == 0.0 and float(p_light.ess.min()) > 0.8  # ESS/K ≈ e^(−σ²)
