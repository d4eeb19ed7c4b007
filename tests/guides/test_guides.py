"""Guides: the full-rank head's covariance, the IAF head's density, and the shared program."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import ModelConfig
from pyro_vae.guides.amortized import GUIDES, FullRankNormalHead, IAFHead
from pyro_vae.stories.build import build_vae, with_options


def _guide(name: str, latent_dim: int = 3):
    cfg = with_options(ModelConfig(latent_dim=latent_dim, hidden_sizes=(8,), guide=name),
                       flow_layers=2)
    return build_vae(cfg, data_dim=5, seed=0)[1]


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide_samples_site_z_per_image(name):
    """One site "z" of shape [N, d] in the data plate; q(z | x) has batch [N], event [d]."""
    guide = _guide(name)
    x = torch.rand(4, 5)
    trace = pyro.poutine.trace(guide).get_trace(x)
    assert [n for n, s in trace.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)] == ["z"]
    assert trace.nodes["z"]["value"].shape == (4, 3)
    q = guide.z_dist(x)
    assert q.batch_shape == (4,) and q.event_shape == (3,)


def test_full_rank_covariance_is_positive_definite():
    """Σ = L Lᵀ is symmetric with strictly positive eigenvalues, for ordinary and large
    encoder features (float64, so that rounding cannot hide or fake definiteness)."""
    torch.manual_seed(0)
    head = FullRankNormalHead(in_features=6, latent_dim=4, floor=1e-3).double()
    h = torch.cat([torch.randn(50, 6), 10 * torch.randn(50, 6), torch.zeros(1, 6)]).double()
    with torch.no_grad():
        cov = head(h).covariance_matrix
        lower = head.scale_tril(h)
    assert torch.allclose(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    assert (torch.linalg.cholesky_ex(cov).info == 0).all()
    assert torch.equal(lower, lower.tril()) and (lower.diagonal(dim1=-2, dim2=-1) >= 1e-3).all()


def test_full_rank_density_matches_the_covariance_form():
    """log q(z | x) from the Cholesky factor equals the N(μ, Σ) density computed from Σ itself,
    and Σ has correlations (it is not secretly diagonal)."""
    torch.manual_seed(1)
    head = FullRankNormalHead(in_features=6, latent_dim=3).double()
    h, z = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    q = head(h)
    cov = head.scale_tril(h) @ head.scale_tril(h).transpose(-1, -2)
    diff = z - q.mean
    quad = (diff.unsqueeze(-2) @ torch.linalg.solve(cov, diff.unsqueeze(-1))).reshape(5)
    expected = -0.5 * (quad + torch.logdet(cov) + 3 * torch.log(torch.tensor(2 * torch.pi)))
    assert torch.allclose(q.log_prob(z), expected, atol=1e-10)
    off = cov - torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
    assert off.abs().max() > 1e-2


def test_iaf_density_integrates_to_one():
    """q(z | x) of a 2-D IAF guide for one x, integrated on a 301² grid over ±6 σ of its draws.

    The base is Gaussian and the affine IAF layers are smooth, so the trapezoid
    error at this spacing is ~1e-4; the mass beyond the box is below 1e-6.
    A 5e-3 bound leaves room for both and still catches a missing log-det term.
    """
    torch.manual_seed(2)
    head = IAFHead(in_features=6, latent_dim=2, layers=2).double()
    h = torch.randn(6, dtype=torch.float64)
    q = head(h)
    with torch.no_grad():
        draws = q.sample((4000,))
        centre, spread = draws.mean(0), draws.std(0)
        axes = [torch.linspace(float(c - 6 * s), float(c + 6 * s), 301, dtype=torch.float64)
                for c, s in zip(centre, spread)]
        z = torch.cartesian_prod(*axes)
        density = head(h).log_prob(z).exp().reshape(301, 301)
    mass = torch.trapezoid(torch.trapezoid(density, axes[1], dim=1), axes[0])
    assert abs(float(mass) - 1) < 5e-3


def test_iaf_is_conditioned_on_the_encoder_features():
    """Two inputs with the same base parameters but different features get different q."""
    torch.manual_seed(3)
    head = IAFHead(in_features=4, latent_dim=2, layers=1)
    eps = torch.zeros(2)
    h1, h2 = torch.randn(4), torch.randn(4)
    flow = head.flows[0]
    assert not torch.allclose(flow.condition(h1)(eps), flow.condition(h2)(eps))


def test_closed_form_density_flags():
    assert _guide("diagonal").scores_any_z and _guide("full-rank").scores_any_z
    assert not _guide("iaf").scores_any_z


def test_iaf_mean_is_the_average_draw():
    """The IAF posterior's ``mean`` (no closed form) agrees with a large independent sample:
    64 draws per estimate, so the 4-sd bound is 4·σ/√64 per coordinate."""
    torch.manual_seed(4)
    head = IAFHead(in_features=4, latent_dim=2, layers=2)
    q = head(torch.randn(4))
    big = q.sample((20_000,))
    sd = big.std(0)
    assert ((q.mean - big.mean(0)).abs() < 4 * sd / 8 + 4 * sd / 141).all()
