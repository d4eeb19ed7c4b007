"""The pPCA closed forms that other tests rely on, checked independently."""

from __future__ import annotations

import torch

from pyro_vae.config import ModelConfig
from pyro_vae.models.linear_gaussian import LinearGaussian
from pyro_vae.stories.build import build_vae, with_options


def _ppca(seed: int = 0):
    cfg = with_options(ModelConfig(latent_dim=2, decoder="linear", likelihood="gaussian-fixed"),
                       sigma=0.5)
    model, _ = build_vae(cfg, data_dim=3, seed=seed)
    return model, LinearGaussian.of(model)


def test_log_marginal_matches_quadrature():
    """p(x) = ∫ p(x|z) p(z) dz by a 2-D grid; a 401² grid over ±8 is exact to ~1e-6 here."""
    model, lg = _ppca()
    x = torch.tensor([[0.3, -0.2, 1.0]])
    axis = torch.linspace(-8, 8, 401, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_joint = model.z_dist().log_prob(z.float()).double() + model.x_dist(z.float()).log_prob(x).double()
    cell = (axis[1] - axis[0]) ** 2
    quad = torch.logsumexp(log_joint, 0) + torch.log(cell)
    assert torch.allclose(lg.log_marginal(x).double(), quad, atol=1e-4)


def test_posterior_is_bayes_rule():
    """log p(z|x) = log p(x|z) + log p(z) − log p(x) at arbitrary z."""
    model, lg = _ppca(1)
    x = torch.randn(4, 3)
    mean, cov = lg.posterior(x)
    z = torch.randn(4, 2)
    post = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(z)
    with torch.no_grad():
        bayes = model.x_dist(z).log_prob(x) + model.z_dist().log_prob(z) - lg.log_marginal(x)
    assert torch.allclose(post, bayes, atol=1e-4)
