"""Priors: log-densities against independent computations, shapes, and the VampPrior's wiring."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.models.priors import PRIORS, FlowPrior, GaussianMixture
from pyro_vae.stories.build import build_vae, with_options


def _prior(name: str, latent_dim: int = 3, **kw):
    cfg = with_options(ModelConfig(latent_dim=latent_dim, hidden_sizes=(8,), prior=name, **kw),
                       components=4)
    model, guide = build_vae(cfg, data_dim=5, seed=0)
    return model.prior, guide


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_prior_shapes(name):
    """Every prior is one distribution over R^d: batch [], event [d]; samples score finitely."""
    prior, _ = _prior(name)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (3,)
    z = p.sample((7,))
    assert z.shape == (7, 3)
    assert torch.isfinite(p.log_prob(z)).all() and p.log_prob(z).shape == (7,)


def test_mixture_log_prob_is_a_logsumexp_of_gaussians():
    """log Σ_k π_k Π_d N(z_d; μ_kd, σ_kd²), written out by hand in float64."""
    torch.manual_seed(0)
    prior = GaussianMixture(latent_dim=3, components=4).double()
    with torch.no_grad():  # move away from the symmetric start
        prior.logits.normal_()
        prior.raw_scales.normal_()
    z = 2 * torch.randn(11, 3, dtype=torch.float64)
    mu, sigma = prior.locs, prior.scales()
    log_pi = prior.logits - torch.logsumexp(prior.logits, 0)
    sq = ((z[:, None, :] - mu) / sigma) ** 2                      # [11, K, 3]
    log_comp = (-0.5 * sq - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = torch.logsumexp(log_pi + log_comp, dim=1)
    assert torch.allclose(prior().log_prob(z), expected, rtol=0, atol=1e-10)


def _randomized_flow(latent_dim: int, noise: float) -> FlowPrior:
    """A flow prior moved away from its near-identity start, in float64.

    Larger noise makes the coupling networks' outputs so large that the density
    becomes spikes narrower than any affordable grid, hence a smaller noise in 2-D.
    """
    torch.manual_seed(1)
    prior = FlowPrior(latent_dim, layers=2).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(noise * torch.randn_like(p))
    return prior


def test_flow_prior_1d_integrates_to_one():
    """∫ p(z) dz by the trapezoid rule on [-15, 15] with h = 1e-3.

    The splines are the identity outside [-5, 5], so the tails are N(0, 1) and
    the mass outside the grid is below 1e-40. The density is continuous with
    kinks at the spline knots, so the trapezoid error is O(h²) ~ 1e-6, far
    below the 1e-4 allowed.
    """
    prior = _randomized_flow(1, noise=0.5)
    z = torch.linspace(-15, 15, 30_001, dtype=torch.float64)
    with torch.no_grad():
        density = prior().log_prob(z[:, None]).exp()
    assert abs(float(torch.trapezoid(density, z)) - 1) < 1e-4
    assert float(density.max()) > 0.5  # not N(0, 1) (peak 0.40): the flow does reshape it


def test_flow_prior_2d_integrates_to_one():
    """A 2-D coupling flow: ∫∫ p(z) dz on a 401² grid over [-8, 8]² (h = 0.04).

    Mass outside the grid is that of N(0, I) beyond 8 (< 1e-14). The O(h²)
    quadrature error for a density with kinks and peak ~1 is ~1e-3 at this h
    (the same grid gives 1.0012 for the unperturbed flow), so 3e-3 is the bound.
    """
    prior = _randomized_flow(2, noise=0.1)
    axis = torch.linspace(-8, 8, 401, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        density = prior().log_prob(z).exp().reshape(401, 401)
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert abs(float(mass) - 1) < 3e-3
    assert float(density.max()) > 0.5  # N(0, I) peaks at 0.16: the flow does reshape it


def test_vamp_prior_is_the_mean_of_guide_posteriors_at_pseudo_inputs():
    """log p(z) = log (1/K) Σ_k q(z | u_k), with q computed by the guide itself."""
    prior, guide = _prior("vamp")
    z = torch.randn(6, 3)
    q = guide.z_dist(prior.pseudo_inputs())
    expected = torch.logsumexp(q.log_prob(z[:, None, :]), dim=1) - math.log(4)
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-5)
    assert ((prior.pseudo_inputs() >= 0) & (prior.pseudo_inputs() <= 1)).all()


def test_vamp_prior_shares_the_guide_without_owning_it():
    """The guide's parameters get the prior's gradient but are stored (and checkpointed) once."""
    cfg = with_options(ModelConfig(latent_dim=2, hidden_sizes=(8,), prior="vamp"), components=3)
    model, guide = build_vae(cfg, data_dim=5, seed=0)
    assert not any(k.startswith("prior.guide") for k in model.state_dict())
    model.z_dist().log_prob(torch.randn(4, 2)).sum().backward()
    assert all(p.grad is not None for p in guide.parameters())
    assert model.prior.raw_inputs.grad is not None


def test_vamp_prior_refuses_a_guide_without_closed_form_density():
    cfg = ModelConfig(latent_dim=2, hidden_sizes=(8,), prior="vamp", guide="iaf")
    with pytest.raises(ValueError, match="vamp prior cannot be used with the 'iaf' guide"):
        build_vae(cfg, data_dim=5)
