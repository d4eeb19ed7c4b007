"""``diagnose`` on stories that are not the built-in VAE: several latent sites, a positive
one among them, per-row labels, and an exact answer for a constrained site."""

from __future__ import annotations

import json
import math

import arviz as az
import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.config import DataConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.diagnostics.config import DiagnoseConfig
from pyro_vae.diagnostics.report import write_diagnostics
from pyro_vae.diagnostics.suite import diagnose
from pyro_vae.guides.auto import AutoAmortizedGuide
from pyro_vae.guides.encoders import MLPEncoder
from pyro_vae.infer.loop import fit

matplotlib.use("Agg")
D = 6


def ink_story(decoder: nn.Module):
    """z ~ N(±0.5, I) by label, a positive ink ~ LogNormal(0, ½) per image that multiplies
    the decoder's logits, and binary pixels."""

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            loc = (y.float() - 0.5).unsqueeze(-1).expand(-1, 2)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            ink = pyro.sample("ink", dist.LogNormal(0.0, 0.5))
            logits = decoder(z) * ink.unsqueeze(-1)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    return model


@pytest.fixture(scope="module")
def ink_diagnosis():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((200, D), 0.3), generator=gen)
    y = torch.randint(0, 2, (200,), generator=gen)
    data = from_tensor(x, y, cfg=DataConfig(name="tensor", binarize="none"))
    torch.manual_seed(0)
    model = ink_story(nn.Linear(2, D))
    guide = AutoAmortizedGuide(model, MLPEncoder(D, (16,)), data.train.x[:8], y=data.train.labels[:8])
    result = fit(model, guide, data, TrainConfig(epochs=2, batch_size=32, device="cpu",
                                                 objective="elbo"), progress=False)
    cfg = DiagnoseConfig(points=3, chains=2, warmup=20, samples=15, jit=False, max_tree_depth=4,
                         local_steps=20, elbo_samples=50, collapse_points=20, ppc_points=20)
    heldout = data.eval_split("test")
    return diagnose(result.model, result.guide, heldout, cfg, batch=data.test.fields())


def test_every_site_is_sampled_fitted_and_written(ink_diagnosis, tmp_path):
    d = ink_diagnosis
    assert [s.name for s in d.sites] == ["z", "ink"] and d.image_site == "x"
    assert torch.all(d.nuts.z["ink"] > 0)
    written = write_diagnostics(d, tmp_path, (D,), title="ink")
    idata = az.from_netcdf(written.netcdf)
    for group in ("posterior", "guide", "local_guide"):
        assert idata[group].z.dims == ("chain", "draw", "point", "z_dim")
        assert idata[group].z.shape == (2, 15, 3, 2)
        assert idata[group].ink.shape == (2, 15, 3)
        assert float(idata[group].ink.min()) > 0
    assert idata.log_likelihood.x.shape == (2, 15, 3) and idata.observed_data.x.shape == (3, D)
    assert "diagnose_pairs.png" not in {p.name for p in written.figures}  # not one 2-D site
    assert "ink" in written.html.read_text()


def test_collapse_and_gaps_are_reported_per_site(ink_diagnosis):
    summary = ink_diagnosis.summary()
    json.dumps(summary, allow_nan=False)
    collapse = summary["collapse"]
    assert set(collapse["sites"]) == {"z", "ink"}
    assert collapse["sites"]["z"]["dim"] == 2 and collapse["sites"]["ink"]["dim"] == 1
    assert collapse["latent_dim"] == 3
    assert collapse["active_units"] == sum(s["active_units"] for s in collapse["sites"].values())
    for site in collapse["sites"].values():
        assert all(v is not None and v >= -0.5 for v in site["kl_per_dim"])  # MC for ink
    assert math.isfinite(collapse["kl_total"])
    g = ink_diagnosis.gaps
    for values in (g.log_px, g.elbo_amortized, g.elbo_local, g.approximation, g.amortization):
        assert torch.all(torch.isfinite(values))
    assert set(summary["nuts"]["sites"]) == {"z", "ink"}


# ------------------------------------------------------------- an exact constrained posterior

SIGMA, DX = 0.5, 3


def lognormal_story(x: torch.Tensor) -> None:
    """log s ~ N(0, 1), x_d ~ N(log s, σ²): conjugate in u = log s."""
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("ink", dist.LogNormal(0.0, 1.0))
        loc = s.log().unsqueeze(-1).expand(s.shape + (DX,))
        pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)


def exact(x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Posterior mean ``[N]`` and sd of u = log s, and log p(x) ``[N]``."""
    precision = 1 + DX / SIGMA ** 2
    cov = SIGMA ** 2 * torch.eye(DX) + torch.ones(DX, DX)
    log_px = dist.MultivariateNormal(torch.zeros(DX), covariance_matrix=cov).log_prob(x)
    return x.sum(1) / SIGMA ** 2 / precision, precision ** -0.5, log_px


def shifted_guide(x: torch.Tensor) -> None:
    """q(s | x): log-normal, its location 0.3 off the exact posterior's, twice as wide."""
    mean, sd, _ = exact(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("ink", dist.LogNormal(mean + 0.3, 2 * sd))


def test_lognormal_site_against_its_closed_form():
    """NUTS's mean of log s, log p(x) by the NUTS-matched proposal, and a zero approximation
    gap (the local Gaussian in u = log s holds the exact posterior: this needs the Jacobian
    of the exp in log q right), each within 4.5 Monte Carlo standard errors."""
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(40, 1, generator=gen)
    heldout = u + SIGMA * torch.randn(40, DX, generator=gen)
    cfg = DiagnoseConfig(points=4, chains=2, warmup=150, samples=250, local_steps=300,
                         elbo_samples=4000, collapse_points=40, ppc_points=40)
    d = diagnose(lognormal_story, shifted_guide, heldout, cfg)
    x = heldout[d.indices]
    mean, sd, log_px = exact(x)
    log_s = d.nuts.z["ink"].log().double()  # [chains, draws, N]
    ess = torch.as_tensor(az.ess(az.convert_to_dataset(log_s.numpy())).x.values)
    assert torch.all((log_s.mean((0, 1)) - mean).abs() < 4.5 * sd / ess.sqrt())
    g = d.gaps
    assert torch.all(g.khat_log_px < 0.5)
    assert torch.all((g.log_px - log_px).abs() < 4.5 * g.log_px_se)
    assert torch.all(g.approximation.abs() < 4.5 * (g.log_px_se + g.elbo_local_se) + 0.01)
    # Collapse in closed form: KL(LogNormal ‖ LogNormal) is KL of the Normals of log s, and
    # E_q[log s] = mean + 0.3, whose variance over x is that of the exact posterior mean.
    c = d.collapse.sites["ink"]
    all_mean, _, _ = exact(heldout)
    kl = (math.log(1 / (2 * sd)) + (4 * sd ** 2 + (all_mean + 0.3) ** 2) / 2 - 0.5).mean()
    assert c.analytic and c.kl.shape == (1,) and float(c.kl) == pytest.approx(float(kl), rel=1e-4)
    assert float(c.mean_variance) == pytest.approx(float(all_mean.var()), rel=1e-4)
