"""Amortized guides q_φ(z | x): an encoder body plus a head that turns its
features into a distribution over z. The head is the swappable value; every
guide shares the one :class:`AmortizedGuide` program."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from pyro import poutine
from torch import Tensor, nn
from torch.nn.functional import softplus

from pyro_vae.config import ModelConfig
from pyro_vae.registry import Registry

GUIDES: Registry = Registry("guide")


class AmortizedGuide(nn.Module):
    """q_φ(z_n | x_n) = head(encoder(x_n)) for each image, inside ``pyro.plate("data", N)``.

    Takes the model's arguments ``(x, beta)`` and scales the latent site by
    ``beta`` exactly as the model does.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def z_dist(self, x: Tensor) -> dist.Distribution:
        """q(z | x) for x ``[..., D]``: batch shape ``[...]``, event shape ``[latent_dim]``."""
        return self.head(self.encoder(x))

    def forward(self, x: Tensor, beta: float = 1.0) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                return pyro.sample("z", self.z_dist(x))


class DiagonalNormalHead(nn.Module):
    """N(μ(h), diag σ(h)²) with σ = softplus(·) + ``floor``."""

    def __init__(self, in_features: int, latent_dim: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_scale = nn.Linear(in_features, latent_dim)
        self.floor = floor

    def forward(self, h: Tensor) -> dist.Distribution:
        scale = softplus(self.raw_scale(h)) + self.floor
        return dist.Normal(self.loc(h), scale, validate_args=False).to_event(1)


@GUIDES.register("diagonal")
def diagonal_normal(cfg: ModelConfig, encoder: nn.Module) -> nn.Module:
    """q(z | x) = N(μ_φ(x), diag σ_φ(x)²)."""
    return AmortizedGuide(encoder, DiagonalNormalHead(encoder.out_features, cfg.latent_dim,
                                                       cfg.scale_floor))
