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
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from pyro_vae.config import ModelConfig
from pyro_vae.evaluation.estimates import Estimate, bits_per_dim, psis_diagnostics
from pyro_vae.evaluation.importance import evaluate, log_importance_weights
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.stories.build import build_vae, with_options
from pyro_vae.traces import log_mean_exp

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


class TwoComponentPPCA:
    """A mixture of two pPCA components, for each of N rows:

    .. code-block:: text

        c_n ~ Categorical(π)              enumerated: summed out exactly by the evaluator
        z_n ~ N(0, 1)
        x_n ~ N(W_c z_n + b_c, σ² I_2)

    so that p(x) = Σ_c π_c N(x; b_c, W_c W_cᵀ + σ² I) in closed form.
    """

    def __init__(self) -> None:
        self.logits = torch.tensor([0.3, -0.3], dtype=torch.float64)
        self.W = torch.tensor([[1.5, 0.2], [-0.3, 1.0]], dtype=torch.float64)  # [C, D]
        self.b = torch.tensor([[1.0, -1.0], [-1.5, 0.5]], dtype=torch.float64)
        self.sigma = 0.4

    def __call__(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            loc = Vindex(self.W)[c] * z.unsqueeze(-1) + Vindex(self.b)[c]
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W[:, :, None] * self.W[:, None, :] + self.sigma ** 2 * torch.eye(2, dtype=x.dtype)
        per_c = dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x[:, None, :])
        return torch.logsumexp(per_c + torch.log_softmax(self.logits, 0), dim=-1)


def broad_guide(x: torch.Tensor) -> None:
    """q(z | x) = N(0, 1.5²): covers both components' posteriors, so the weights are bounded."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], dtype=x.dtype), 1.5))


def test_an_enumerated_discrete_site_is_summed_exactly_in_the_weights():
    """Two-component pPCA: with c enumerated, IWAE and prior Monte Carlo with K = 20000 agree
    with the closed-form log p(x) within 4 standard errors (delta method) per point."""
    story = TwoComponentPPCA()
    x = torch.tensor([[1.0, -1.0], [-2.0, 0.7], [0.0, 0.0], [2.5, -0.6]], dtype=torch.float64)
    exact = story.log_marginal(x)
    pyro.set_rng_seed(0)
    for guide in (broad_guide, None):
        log_w = log_importance_weights(story, guide, x, 20000)
        w = (log_w - log_w.max(0).values).exp()
        se = w.std(0) / (w.mean(0) * math.sqrt(len(w)))
        assert torch.all((log_mean_exp(log_w) - exact).abs() < 4 * se + 1e-6), (log_mean_exp(log_w), exact, se)
        assert torch.all(se < 0.02)


def _prior_follows_component(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(3.0 * c.to(x.dtype), 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)


def test_a_prior_drawn_latent_that_follows_an_enumerated_site_is_scored_exactly():
    """c ~ Cat(½, ½), z ~ N(3c, 1), x ~ N(z, 1): with the prior as proposal each weight is
    Σ_c p(c) p(x | z_c), z_c ~ p(z | c), unbiased for p(x) = Σ_c ½ N(x; 3c, 2). K = 40000
    draws: the relative s.d. of the mean weight is below 1.2/√K ≈ 0.006 here (p(x | z)/p(x)
    is bounded by √2 e^{x²/4}·… at these points), so 0.03 nats is five standard errors."""
    x = torch.tensor([[-0.5], [1.5], [3.2]], dtype=torch.float64)
    torch.manual_seed(0)
    log_w = log_importance_weights(_prior_follows_component, None, x, 40000)
    exact = torch.logsumexp(torch.stack([dist.Normal(3.0 * c, 2 ** 0.5).log_prob(x[:, 0])
                                         for c in (0.0, 1.0)]) + math.log(0.5), 0)
    assert torch.allclose(log_mean_exp(log_w, 0), exact, atol=0.03)


def test_a_guide_that_leaves_out_a_latent_following_an_enumerated_site_is_refused():
    def guide(x):
        pass

    with pytest.raises(ValueError, match="'z' depends on an enumerated discrete site"):
        log_importance_weights(_prior_follows_component, guide, torch.zeros(3, 1), 10)


def test_each_weight_sums_the_enumerated_site_for_its_own_draw_of_z():
    """Per draw, the weight is log Σ_c π_c p(x | z, c) + log p(z) − log q(z): c is summed, not
    sampled (a sampled c would also be unbiased, so only this per-draw identity tells them apart)."""
    story = TwoComponentPPCA()
    x = torch.tensor([[1.0, -1.0], [-2.0, 0.7], [0.0, 0.0]], dtype=torch.float64)
    draws = []

    def recording_guide(x):
        with pyro.plate("data", x.shape[0]):
            q = dist.Normal(torch.zeros(x.shape[0], dtype=x.dtype), 1.5)
            draws.append((pyro.sample("z", q), q))

    log_w = log_importance_weights(story, recording_guide, x, 300, particle_chunk=300, point_chunk=3)
    [(z, q)] = draws  # z [300, 3]
    loc = story.W[:, None, None, :] * z[..., None] + story.b[:, None, None, :]  # [C, K, N, D]
    log_px_z = dist.Normal(loc, story.sigma).to_event(1).log_prob(x)  # [C, K, N]
    log_px_z = torch.logsumexp(log_px_z + torch.log_softmax(story.logits, 0)[:, None, None], 0)
    expected = log_px_z + dist.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)
    assert torch.allclose(log_w, expected, atol=1e-9)


def test_a_story_with_an_enumerated_site_trains_with_the_enum_objective():
    """fit with the enum objective (TraceEnum_ELBO) sums c out in training too: the fit runs
    with finite losses and raises the validation ELBO of a two-component mixture."""
    from pyro_vae.config import DataConfig, TrainConfig
    from pyro_vae.data.loading import from_tensor
    from pyro_vae.infer.loop import fit

    story = TwoComponentPPCA()
    torch.manual_seed(0)
    x = torch.rand(200, 2)  # the data layer takes pixel-like values in [0, 1]

    def model(x):
        story.W = pyro.param("W", torch.full((2, 2), 0.1, dtype=x.dtype))
        story.b = pyro.param("b", torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=x.dtype))
        story.logits = story.logits.to(x.dtype)
        story(x)

    def guide(x):
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), scale))

    data = from_tensor(x, cfg=DataConfig(name="tensor", binarize="none"), binary_likelihood=False)
    result = fit(model, guide, data, TrainConfig(epochs=30, batch_size=64, device="cpu",
                                                 objective="enum", lr=0.05), progress=False)
    history = [r.val_elbo for r in result.history]
    assert all(math.isfinite(v) for v in history) and history[-1] > history[0] + 0.1


def test_a_guide_that_enumerates_the_component_gives_log_p_x_exactly_per_draw():
    """The guide enumerates c and proposes z from each component's exact posterior
    p(z | x, c) = N(m_c, v_c): then Σ_c p(x, c, z_c) / q(z_c | x, c) = Σ_c p(x, c) = p(x)
    for every draw, so each weight is log p(x) to rounding (a sampled c would not be)."""
    story = TwoComponentPPCA()
    x = torch.tensor([[1.0, -1.0], [-2.0, 0.7], [0.0, 0.0], [2.5, -0.6]], dtype=torch.float64)

    def exact_guide(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2, dtype=x.dtype)),
                            infer={"enumerate": "parallel"})
            w, b = Vindex(story.W)[c], Vindex(story.b)[c]  # [..., D]
            var = 1.0 / (1.0 + (w * w).sum(-1) / story.sigma ** 2)
            mean = var * (w * (x - b)).sum(-1) / story.sigma ** 2
            pyro.sample("z", dist.Normal(mean, var.sqrt()))

    log_w = log_importance_weights(story, exact_guide, x, 50)
    assert torch.allclose(log_w, story.log_marginal(x).expand(50, -1), atol=1e-10)


def test_grey_pixels_under_a_bernoulli_likelihood_are_refused_naming_the_fix():
    """A Bernoulli scores x in {0, 1} only: grey levels (the loaded digits before their
    binarization) get a number that bounds nothing, so evaluate refuses them, saying how to
    binarize; binary rows, and grey rows under a Gaussian, are scored."""
    from pyro_vae.validation import DataError

    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)), D, seed=0)
    grey = torch.rand(4, D, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match=r"sample 0 has values other than 0 and 1.*"
                                        r"binarize .*eval_split.*torch\.bernoulli"):
        evaluate(model, guide, grey, num_samples=4)
    assert math.isfinite(evaluate(model, guide, torch.bernoulli(grey), num_samples=4).iwae.mean)
    gaussian, q = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,), likelihood="gaussian"), D, seed=0)
    assert math.isfinite(evaluate(gaussian, q, grey, num_samples=4).iwae.mean)
