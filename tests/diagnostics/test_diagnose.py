"""Diagnostics against exact answers: on pPCA the posterior and log p(x) are known in closed form."""

from __future__ import annotations

import copy
import html
import json
import math

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.diagnostics.collapse import kl_per_dimension, posterior_collapse
from pyro_vae.diagnostics.config import DiagnoseConfig
from pyro_vae.diagnostics.gaps import inference_gaps
from pyro_vae.diagnostics.nuts import run_nuts
from pyro_vae.diagnostics.posteriors import PosteriorProposal, fit_local
from pyro_vae.diagnostics.ppc import predictive_check
from pyro_vae.diagnostics.report import verdicts, write_diagnostics
from pyro_vae.diagnostics.suite import diagnose
from pyro_vae.evaluation.estimates import psis_diagnostics
from pyro_vae.evaluation.importance import log_importance_weights
from pyro_vae.guides.amortized import GUIDES
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.models.priors import PRIORS
from pyro_vae.stories.build import build_vae, with_options
from pyro_vae.traces import latent_sites, log_mean_exp

matplotlib.use("Agg")
D, LATENT, SIGMA = 5, 2, 0.5


def ppca(seed: int = 0, orthogonal: bool = False, correlated: bool = False):
    """A pPCA model (and its untrained guide); ``orthogonal`` W makes p(z | x) diagonal,
    ``correlated`` (nearly parallel columns) makes it strongly correlated."""
    cfg = with_options(ModelConfig(latent_dim=LATENT, decoder="linear", likelihood="gaussian-fixed",
                                   hidden_sizes=(16,)), sigma=SIGMA)
    model, guide = build_vae(cfg, data_dim=D, seed=seed)
    if orthogonal:
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=torch.Generator().manual_seed(seed)))
            model.decoder.linear.weight.copy_(q * torch.tensor([1.5, 0.7]))
    if correlated:
        with torch.no_grad():
            w = model.decoder.linear.weight
            w[:, 1] = 0.9 * w[:, 0] + 0.2 * w[:, 1]
    lg = LinearGaussian.of(model)
    return model, guide, lg, _draw(lg, 4, seed)


def _draw(lg: LinearGaussian, n: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 100)
        return lg.marginal().sample((n,))


def analytic_elbo(lg: LinearGaussian, x: torch.Tensor, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """ELBO of q = N(loc ``[N, d]``, cov ``[N, d, d]``) under pPCA, in closed form: ``[N]``."""
    resid = x - loc @ lg.W.T - lg.b
    trace = (lg.W @ cov @ lg.W.T).diagonal(dim1=-2, dim2=-1).sum(-1)  # tr(W S Wᵀ)
    loglik = -0.5 * D * math.log(2 * math.pi * lg.sigma ** 2) - ((resid ** 2).sum(1) + trace) / (2 * lg.sigma ** 2)
    logprior = -0.5 * LATENT * math.log(2 * math.pi) - 0.5 * ((loc ** 2).sum(1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1))
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    return loglik + logprior + entropy


def moments(q: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[N, d]`` and covariance ``[N, d, d]`` of a diagonal or full-rank Gaussian."""
    if isinstance(q, dist.MultivariateNormal):
        return q.loc, q.covariance_matrix
    return q.mean, torch.diag_embed(q.variance)


def test_nuts_recovers_the_exact_posterior():
    model, guide, lg, x = ppca(0)
    cfg = DiagnoseConfig(chains=2, warmup=150, samples=250, seed=0)
    nuts = run_nuts(model, guide, x, cfg)
    mean, cov = lg.posterior(x)
    z = nuts.z["z"].double()
    ess = torch.as_tensor(az.ess(az.convert_to_dataset(z.numpy())).x.values)  # [N, d]
    assert float(az.rhat(az.convert_to_dataset(z.numpy())).x.max()) < 1.05
    # Monte Carlo standard error of a mean is sd / sqrt(ESS); of a covariance entry of a
    # Gaussian, sqrt((C_ii C_jj + C_ij²) / ESS). 4.5 standard errors over 20 checks.
    sd = cov.diag().sqrt().double()
    assert torch.all((z.mean((0, 1)) - mean).abs() < 4.5 * sd / ess.sqrt())
    flat = z.flatten(0, 1)
    c = cov.double()
    se = ((c.diag()[:, None] * c.diag()[None, :] + c ** 2) / ess.min()).sqrt()
    for n in range(len(x)):
        assert torch.all((torch.cov(flat[:, n].T) - c).abs() < 4.5 * se)
    assert nuts.diverging.shape == (2, 250)


@pytest.mark.parametrize("orthogonal,guide_name", [(True, "diagonal"), (False, "diagonal"),
                                                   (False, "full-rank")])
def test_local_gaussian_reaches_the_best_elbo_of_its_family(orthogonal, guide_name):
    """The best diagonal Gaussian misses log p(x) by exactly KL(q* ‖ p(z | x)), which is
    ½(Σ log Λ_ii − log det Λ) for posterior precision Λ: zero when W has orthogonal columns.
    The best full-rank Gaussian is the posterior itself: zero gap for any W."""
    torch.manual_seed(0)  # the local fit and the Monte Carlo below draw from the global RNG
    model, _, lg, x = ppca(1, orthogonal, correlated=not orthogonal)
    _, guide = build_vae(ModelConfig(latent_dim=LATENT, hidden_sizes=(16,), guide=guide_name), D, seed=1)
    local = fit_local(model, guide, x, DiagnoseConfig(local_steps=400, seed=0))
    precision = torch.linalg.inv(lg.posterior(x)[1])
    exact_gap = 0.5 * (precision.diag().log().sum() - torch.logdet(precision))
    if guide_name == "full-rank":
        exact_gap = torch.zeros(())
    with torch.no_grad():
        elbo = analytic_elbo(lg, x, *moments(local.joint()))
    # Optimization error: the ELBO is flat (quadratic) at the optimum, so a few 1e-3 nats.
    assert torch.allclose(lg.log_marginal(x) - elbo, exact_gap.expand(len(x)), atol=0.01)
    # log p(x) comes, as in diagnose(), from a Student-t matched to posterior draws (here
    # exact ones, there NUTS's). With the local diagonal q as proposal instead, a correlated
    # posterior puts the IWAE error above the ELBO's SE (7 failures in 12 seeds).
    mean, cov = lg.posterior(x)
    draws = dist.MultivariateNormal(mean, covariance_matrix=cov).sample((2, 500))
    proposal = PosteriorProposal(latent_sites(model, x), {"z": draws})
    gaps = inference_gaps(model, guide, local, x, samples=4000, proposal=proposal)
    # log p(x) by IWAE: 4.5 of its own standard errors, which hold while k̂ < 0.5. The gap,
    # log p(x) minus the Monte Carlo ELBO, adds 4.5 of the ELBO's and the optimization error.
    assert torch.all(gaps.khat_log_px < 0.5)
    assert torch.all((gaps.log_px - lg.log_marginal(x)).abs() < 4.5 * gaps.log_px_se)
    tol = 4.5 * (gaps.log_px_se + gaps.elbo_local_se) + 0.01
    assert torch.all((gaps.approximation - exact_gap).abs() < tol)


def test_untrained_encoder_has_a_positive_amortization_gap():
    """Also on more points than the evaluator's default chunk of rows (8 on a CPU)."""
    model, guide, lg, _ = ppca(2)
    x = _draw(lg, 20, 2)
    local = fit_local(model, guide, x, DiagnoseConfig(local_steps=300))
    gaps = inference_gaps(model, guide, local, x, samples=2000)
    se = (gaps.elbo_amortized_se ** 2 + gaps.elbo_local_se ** 2).sqrt()
    assert torch.all(gaps.amortization > 4.5 * se)


class ScaledGuide(nn.Module):
    """q(z | x) = N(x[:, :4] · scales, 0.5²): dimension d varies over data with variance scales_d²."""

    def __init__(self, scales: list[float]) -> None:
        super().__init__()
        self.scales = torch.tensor(scales)

    def z_dist(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x[:, :4] * self.scales, 0.5).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.z_dist(x))


def test_active_units_and_kl_per_dimension_on_a_constructed_case():
    cfg = with_options(ModelConfig(latent_dim=4, decoder="linear", likelihood="gaussian-fixed",
                                   hidden_sizes=(16,)), sigma=SIGMA)
    model, _ = build_vae(cfg, data_dim=D, seed=0)  # p(z) = N(0, I) on four dimensions
    x = torch.randn(500, D, generator=torch.Generator().manual_seed(0))
    x = (x - x.mean(0)) / x.std(0)  # unit sample variance: Cov_x(E_q[z_d]) = scales_d² exactly
    scales = [1.0, 0.2, 0.05, 0.0]  # variances 1, 0.04, 0.0025, 0 around the 0.01 threshold
    collapse = posterior_collapse(model, ScaledGuide(scales), x).sites["z"]
    assert torch.allclose(collapse.mean_variance, torch.tensor(scales) ** 2, atol=1e-5)
    assert collapse.active.tolist() == [True, True, False, False]
    m = x[:, :4] * torch.tensor(scales)
    expected = (0.5 * (m ** 2 + 0.25 - 1) - math.log(0.5)).mean(0)
    assert collapse.analytic and torch.allclose(collapse.kl, expected, atol=1e-5)


def test_monte_carlo_kl_for_other_factorized_pairs():
    """Laplace against Normal has no registered KL: a Monte Carlo estimate within 4.5 SE."""
    q = dist.Laplace(torch.zeros(3, 2), 1.0).to_event(1)
    p = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    torch.manual_seed(0)
    kl, exact = kl_per_dimension(q, p, draws=20000)
    z = dist.Laplace(0.0, 1.0).sample((200000,))
    truth = float((dist.Laplace(0.0, 1.0).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).mean())
    # Standard error of the 20000-draw mean: the integrand's sd (≈ 1.2) / sqrt(20000).
    assert not exact and torch.allclose(kl, torch.full_like(kl, truth), atol=4.5 * 1.2 / math.sqrt(20000))


class ExactGuide(nn.Module):
    """The exact posterior of a pPCA model whose W has orthogonal columns (so it is diagonal)."""

    def __init__(self, lg: LinearGaussian) -> None:
        super().__init__()
        self.lg = lg

    def z_dist(self, x: torch.Tensor) -> dist.Distribution:
        mean, cov = self.lg.posterior(x)
        return dist.Normal(mean, cov.diag().sqrt()).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.z_dist(x))


def test_predictive_check_is_calibrated_under_the_exact_posterior():
    """With z ~ p(z | x), (x, z) and (x_rep, z) are exchangeable: the p-value is 1/2."""
    model, _, lg, _ = ppca(3, orthogonal=True)
    x = _draw(lg, 4000, 3)
    torch.manual_seed(0)
    ppc = predictive_check(model, ExactGuide(lg), x)
    assert abs(ppc.p_value - 0.5) < 4.5 * math.sqrt(0.25 / len(x))
    # Pixel means: both are means of 4000 draws with the same marginal; SE = sd·sqrt(2/n).
    sd = lg.marginal().variance.sqrt()
    assert torch.all((ppc.data_mean - ppc.rep_mean).abs() < 4.5 * sd * math.sqrt(2 / len(x)))


@pytest.fixture(scope="module")
def small_diagnosis():
    torch.set_num_threads(1)
    model, guide, lg, _ = ppca(4)
    heldout = _draw(lg, 300, 4)
    cfg = DiagnoseConfig(points=3, chains=2, warmup=60, samples=60, local_steps=100, elbo_samples=300,
                         collapse_points=300, ppc_points=300)
    return diagnose(model, guide, heldout, cfg)


def test_inference_data_round_trips_and_arviz_plots_work(small_diagnosis, tmp_path):
    import matplotlib.pyplot as plt

    written = write_diagnostics(small_diagnosis, tmp_path, (D,), title="ppca")
    idata = az.from_netcdf(written.netcdf)
    assert {"posterior", "guide", "local_guide", "log_likelihood", "observed_data",
            "sample_stats"} <= set(idata.groups())
    assert idata.posterior.z.shape == (2, 60, 3, LATENT)
    assert idata.posterior.z.dims == ("chain", "draw", "point", "z_dim")
    assert idata.guide.z.shape == idata.posterior.z.shape
    assert idata.log_likelihood.x.shape == (2, 60, 3)
    assert idata.observed_data.x.shape == (3, D)
    az.plot_pair(idata, var_names=["z"], coords={"point": [int(idata.posterior.point[0])]})
    az.plot_trace(idata, var_names=["z"])
    az.plot_ess(idata, var_names=["z"])
    az.loo(idata)  # the log_likelihood group is usable by ArviZ's own tools
    plt.close("all")


def test_written_summary_holds_verdicts_figures_and_gaps(small_diagnosis, tmp_path):
    written = write_diagnostics(small_diagnosis, tmp_path, (D,), title="ppca")
    names = {p.name for p in written.figures}
    assert {"diagnose_gaps.png", "diagnose_collapse.png", "diagnose_pixel_maps.png",
            "diagnose_loglik.png", "diagnose_pairs.png"} == names
    page = written.html.read_text()
    assert page.count("data:image/png;base64,") == len(names)
    summary = small_diagnosis.summary()
    for v in verdicts(summary):
        assert html.escape(v.check) in page
    g = summary["gaps"]
    assert g["approximation_gap"] == pytest.approx(g["log_px"] - g["elbo_local"])
    assert g["amortization_gap"] == pytest.approx(g["elbo_local"] - g["elbo_amortized"])
    assert len(g["per_point"]["log_px"]) == 3
    assert np.isfinite(summary["nuts"]["rhat_max"])


def test_a_negative_gap_is_noise_within_two_standard_errors_and_a_failed_fit_beyond(small_diagnosis):
    summary = copy.deepcopy(small_diagnosis.summary())
    for gap, se, ok, phrase in ((-0.18, 0.18, True, "Monte Carlo noise"),
                                (-0.9, 0.1, False, "did not converge"),
                                (0.3, 0.1, True, "lost per image"), (1.5, 0.1, False, "lost per image")):
        summary["gaps"].update(amortization_gap=gap, amortization_gap_se=se)
        v = next(v for v in verdicts(summary) if v.check.startswith("Amortization gap"))
        assert (v.ok, phrase in v.meaning) == (ok, True), (gap, v)
        assert f"{v.value} {v.meaning}".count("nats") == 1  # the unit once, not "nats nats"


def test_posterior_matched_proposal_gives_log_px():
    """A Student-t proposal matched to exact posterior draws: IWAE = log p(x) with small k̂."""
    model, _, lg, x = ppca(5)
    mean, cov = lg.posterior(x)
    torch.manual_seed(0)
    draws = dist.MultivariateNormal(mean, covariance_matrix=cov).sample((2, 500))  # [chains, draws, N, d]
    proposal = PosteriorProposal(latent_sites(model, x), {"z": draws})
    lw = log_importance_weights(model, proposal, x, 4000)
    khat = psis_diagnostics(lw).khat
    # With k̂ < 0.5 the weights have finite variance, and the error of log (mean w) is
    # about sd(w) / (mean(w) sqrt(K)); 4.5 of those.
    w = (lw - lw.max(0).values).exp()
    tol = 4.5 * w.std(0) / (w.mean(0) * math.sqrt(lw.shape[0]))
    assert torch.all(khat < 0.5)
    assert torch.all((log_mean_exp(lw) - lg.log_marginal(x)).abs() < tol)


PARTS = [("diagonal", prior) for prior in PRIORS] + [(guide, "normal") for guide in GUIDES if guide != "diagonal"]


@pytest.mark.parametrize("guide_name,prior_name", PARTS)
def test_every_guide_and_prior_can_be_diagnosed(guide_name, prior_name):
    """Contract: every registered guide and prior goes through the whole diagnosis, and its
    summary is strict JSON (unknown per-dimension KLs, e.g. of flows, are null, not NaN)."""
    cfg = ModelConfig(latent_dim=3, hidden_sizes=(8,), guide=guide_name, prior=prior_name)
    model, guide = build_vae(cfg, data_dim=16, seed=0)
    x = torch.bernoulli(torch.rand(40, 16, generator=torch.Generator().manual_seed(0)))
    tiny = DiagnoseConfig(points=2, chains=2, warmup=5, samples=5, max_tree_depth=3, local_steps=5,
                          elbo_samples=20, collapse_points=40, ppc_points=40)
    summary = diagnose(model, guide, x, tiny).summary()
    json.dumps(summary, allow_nan=False)
    assert math.isfinite(summary["collapse"]["kl_total"]) and summary["collapse"]["kl_total"] >= 0
