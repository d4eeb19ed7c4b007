"""The story and its guide: sites match, one step is finite, shapes are as documented."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.infer.objectives import build_objective
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.programs import scale_latents
from pyro_vae.stories.build import build_part, build_vae, with_options


def _sites(fn, *args):
    trace = poutine.trace(fn).get_trace(*args)
    sites = {name for name, site in trace.nodes.items()
             if site["type"] == "sample" and not site_is_subsample(site)}
    return sites, trace


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_model_and_guide_sites_match(likelihood):
    model, guide = build_vae(ModelConfig(hidden_sizes=(16,), likelihood=likelihood), 12, seed=0)
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    model_sites, trace = _sites(model, x)
    guide_sites, _ = _sites(guide, x)
    assert model_sites == {"z", "x"}
    assert guide_sites == {"z"}
    assert trace.nodes["x"]["is_observed"]
    assert trace.nodes["z"]["value"].shape == (5, 2)


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_one_step_is_finite_and_reaches_every_parameter(likelihood):
    model, guide = build_vae(ModelConfig(hidden_sizes=(16,), likelihood=likelihood), 12, seed=0)
    x = torch.bernoulli(torch.full((7, 12), 0.5))
    with pyro.get_param_store().scope():
        loss = Trace_ELBO().differentiable_loss(model, guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    params = [*model.named_parameters(), *guide.named_parameters()]
    missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


def test_beta_scales_only_the_latent_site():
    """ELBO_β = E[log p(x|z)] + β E[log p(z) − log q(z|x)]: LatentScale, applied from
    outside model and guide, scales the latent site z alone, never the observed x."""
    model, guide = build_vae(ModelConfig(hidden_sizes=(8,)), 6, seed=0)
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    guide_trace = poutine.trace(scale_latents(guide, 0.25)).get_trace(x)
    model_trace = poutine.trace(
        poutine.replay(scale_latents(model, 0.25), trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    assert model_trace.nodes["z"]["scale"] == 0.25
    assert guide_trace.nodes["z"]["scale"] == 0.25
    assert model_trace.nodes["x"]["scale"] == 1.0


def test_beta_objective_is_likelihood_plus_beta_times_kl_term():
    """Same seed, same z: −loss(β) from the objective equals log p(x|z) + β [log p(z) −
    log q(z|x)], both terms read from unscaled traces of the story and its guide."""
    model, guide = build_vae(ModelConfig(hidden_sizes=(8,)), 6, seed=0)
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(5)
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        log_lik = model_trace.nodes["x"]["log_prob_sum"]
        kl_term = model_trace.nodes["z"]["log_prob_sum"] - guide_trace.nodes["z"]["log_prob_sum"]
        pyro.set_rng_seed(5)
        loss = build_objective(TrainConfig()).differentiable_loss(model, guide, x, beta=0.25)
    assert torch.allclose(-loss, log_lik + 0.25 * kl_term, atol=1e-5)


def test_gaussian_density_is_normalized():
    """A Gaussian likelihood scores continuous x as a proper density: ∫ p(x) dx = 1 in 1-D."""
    cfg = with_options(ModelConfig(likelihood="gaussian-fixed"), sigma=0.3)
    likelihood = build_part(cfg, "likelihood", 1)
    grid = torch.linspace(-3, 3, 6001).unsqueeze(1)
    density = likelihood(torch.zeros(1)).log_prob(grid).exp()
    assert torch.trapezoid(density, grid.squeeze(1)).item() == pytest.approx(1.0, abs=1e-4)


def test_learned_sigma_respects_its_floor():
    cfg = with_options(ModelConfig(likelihood="gaussian-pixel"), sigma=0.1, sigma_floor=0.05)
    likelihood = build_part(cfg, "likelihood", 4)
    with torch.no_grad():
        likelihood.raw_sigma.fill_(-50.0)
    assert torch.all(likelihood.sigma() >= 0.05)
    assert likelihood.sigma().shape == (4,)
