"""Amortized guides q_φ(z | x): an encoder body plus a head that turns its
features into a distribution over z. The head is the swappable value; every
guide shares the one :class:`AmortizedGuide` program.

Each head says, in its ``scores_any_z`` attribute, whether its q(z | x) has a
closed-form density at any z (a VampPrior needs that), or only cheaply at the
points it sampled itself (an inverse-autoregressive flow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from pyro_vae.config import ModelConfig
from pyro_vae.registry import Registry

GUIDES: Registry = Registry("guide")


class AmortizedGuide(nn.Module):
    """q_φ(z_n | x_n) = head(encoder(x_n)) for each image, inside ``pyro.plate("data", N)``.

    Takes the model's argument ``x`` (the story contract); per-row extras are not read.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def scores_any_z(self) -> bool:
        """Whether ``z_dist(x).log_prob(z)`` works for any z, not only for q's own draws."""
        return bool(getattr(self.head, "scores_any_z", False))

    def z_dist(self, x: Tensor) -> dist.Distribution:
        """q(z | x) for x ``[..., D]``: batch shape ``[...]``, event shape ``[latent_dim]``."""
        return self.head(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.z_dist(x))


class DiagonalNormalHead(nn.Module):
    """N(μ(h), diag σ(h)²) with σ = softplus(·) + ``floor``."""

    scores_any_z = True

    def __init__(self, in_features: int, latent_dim: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_scale = nn.Linear(in_features, latent_dim)
        self.floor = floor

    def forward(self, h: Tensor) -> dist.Distribution:
        scale = softplus(self.raw_scale(h)) + self.floor
        return dist.Normal(self.loc(h), scale, validate_args=False).to_event(1)


class FullRankNormalHead(nn.Module):
    """N(μ(h), L(h) L(h)ᵀ) with L lower triangular: its strict lower part is linear in h,
    its diagonal softplus(·) + ``floor``, so the covariance is positive definite."""

    scores_any_z = True

    def __init__(self, in_features: int, latent_dim: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_diag = nn.Linear(in_features, latent_dim)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.off_diag = nn.Linear(in_features, len(rows))
        # Start close to the diagonal guide: with default init the d(d-1)/2
        # off-diagonal entries start O(1) and q starts needlessly wide.
        with torch.no_grad():
            self.off_diag.weight.mul_(0.01)
            self.off_diag.bias.zero_()
        self.floor = floor

    def scale_tril(self, h: Tensor) -> Tensor:
        """L(h), shape ``[..., latent_dim, latent_dim]``."""
        d = self.latent_dim
        diag = softplus(self.raw_diag(h)) + self.floor
        lower = h.new_zeros(h.shape[:-1] + (d, d))
        lower[..., self.rows, self.cols] = self.off_diag(h)
        return lower + torch.diag_embed(diag)

    def forward(self, h: Tensor) -> dist.Distribution:
        return dist.MultivariateNormal(self.loc(h), scale_tril=self.scale_tril(h),
                                       validate_args=False)


class IAFPosterior(dist.TransformedDistribution):
    """q(z | x) of the IAF guide. Its mean has no closed form: ``mean`` is the average
    of ``MEAN_DRAWS`` draws (figures use it to place each image in latent space)."""

    MEAN_DRAWS = 64

    @property
    def mean(self) -> Tensor:
        with torch.no_grad():
            return self.sample((self.MEAN_DRAWS,)).mean(0)


class IAFHead(nn.Module):
    """z = f_K ∘ … ∘ f_1(ε), ε ~ N(μ(h), diag σ(h)²), each f_k an inverse-autoregressive
    affine transform whose shift and scale also see the encoder features h
    (Kingma et al., 2016). Sampling and scoring one's own draws is one pass; the
    density at an arbitrary z would need a sequential inversion, so
    ``scores_any_z`` is False."""

    scores_any_z = False

    def __init__(self, in_features: int, latent_dim: int, layers: int,
                 floor: float = 1e-3) -> None:
        super().__init__()
        self.base = DiagonalNormalHead(in_features, latent_dim, floor)
        hidden = [max(64, 3 * latent_dim)]
        self.flows = nn.ModuleList([T.conditional_affine_autoregressive(latent_dim, in_features,
                                                                        hidden_dims=hidden)
                                    for _ in range(layers)])

    def forward(self, h: Tensor) -> dist.Distribution:
        transforms = [flow.condition(h) for flow in self.flows]
        return IAFPosterior(self.base(h), transforms, validate_args=False)


def _floor() -> float:
    return field(default=1e-3, metadata={"help": "the posterior scale is softplus(·) plus this",
                                         "parse": "positive_float", "alias": "scale_floor"})


@dataclass(frozen=True)
class NormalOptions:
    """Settings of the Gaussian guides."""

    scale_floor: float = _floor()


@dataclass(frozen=True)
class IAFOptions:
    """Settings of the ``iaf`` guide."""

    layers: int = field(default=2, metadata={
        "help": "inverse-autoregressive transforms", "parse": "positive_int",
        "alias": "flow_layers"})
    scale_floor: float = _floor()


@GUIDES.register("diagonal", options=NormalOptions)
def diagonal_normal(cfg: ModelConfig, opts: NormalOptions, encoder: nn.Module) -> nn.Module:
    """q(z | x) = N(μ_φ(x), diag σ_φ(x)²)."""
    return AmortizedGuide(encoder, DiagonalNormalHead(encoder.out_features, cfg.latent_dim,
                                                       opts.scale_floor))


@GUIDES.register("full-rank", options=NormalOptions)
def full_rank_normal(cfg: ModelConfig, opts: NormalOptions, encoder: nn.Module) -> nn.Module:
    """q(z | x) = N(μ_φ(x), L_φ(x) L_φ(x)ᵀ), the encoder giving the Cholesky factor."""
    return AmortizedGuide(encoder, FullRankNormalHead(encoder.out_features, cfg.latent_dim,
                                                      opts.scale_floor))


@GUIDES.register("iaf", options=IAFOptions)
def iaf(cfg: ModelConfig, opts: IAFOptions, encoder: nn.Module) -> nn.Module:
    """A diagonal Normal followed by ``opts.layers`` conditional IAF transforms."""
    return AmortizedGuide(encoder, IAFHead(encoder.out_features, cfg.latent_dim, opts.layers,
                                           opts.scale_floor))
