"""Likelihoods p(x | f_θ(z)): each turns a decoder output ``[..., D]`` into a
distribution with event shape ``[D]``. Densities are normalized, in nats, so
numbers compare across likelihoods (for continuous x they are densities)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import inverse_softplus
from pyro_vae.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


class Bernoulli(nn.Module):
    """x_d ~ Bernoulli(sigmoid(f_d(z))); needs x in {0, 1}."""

    def forward(self, logits: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)


class Gaussian(nn.Module):
    """x_d ~ N(f_d(z), σ_d²) with σ fixed, one learned σ, or one learned σ per pixel.

    A learned σ is ``softplus(raw) + floor``: positive, and bounded away from 0
    so that constant pixels cannot drive the density to infinity.
    """

    def __init__(self, data_dim: int, sigma: float, learn: str, floor: float) -> None:
        super().__init__()
        if learn not in ("fixed", "global", "pixel"):
            raise ValueError(f"learn must be 'fixed', 'global' or 'pixel', got {learn!r}")
        self.learn = learn
        self.floor = floor if learn != "fixed" else 0.0
        size = {"fixed": 1, "global": 1, "pixel": data_dim}[learn]
        raw = torch.full((size,), inverse_softplus(max(sigma - self.floor, 1e-6)))
        if learn == "fixed":
            self.register_buffer("raw_sigma", raw)
        else:
            self.raw_sigma = nn.Parameter(raw)

    def sigma(self) -> Tensor:
        """Scale, shape ``[1]`` or ``[D]``."""
        return softplus(self.raw_sigma) + self.floor

    def forward(self, mean: Tensor) -> dist.Distribution:
        return dist.Normal(mean, self.sigma(), validate_args=False).to_event(1)


@LIKELIHOODS.register("bernoulli")
def bernoulli(cfg: ModelConfig, opts: object, data_dim: int) -> nn.Module:
    return Bernoulli()


def _sigma(help_text: str) -> float:
    return field(default=0.1, metadata={"help": help_text, "parse": "positive_float",
                                        "alias": "sigma"})


def _floor() -> float:
    return field(default=0.01, metadata={"help": "a learned σ never falls below this",
                                         "parse": "positive_float", "alias": "sigma_floor"})


@dataclass(frozen=True)
class LearnedSigmaOptions:
    """Settings of the Gaussian likelihoods whose σ is learned."""

    sigma: float = _sigma("starting σ")
    floor: float = _floor()


@dataclass(frozen=True)
class FixedSigmaOptions:
    """Settings of the Gaussian likelihood with a fixed σ."""

    sigma: float = _sigma("the fixed σ")


@LIKELIHOODS.register("gaussian", options=LearnedSigmaOptions)
def gaussian_global(cfg: ModelConfig, opts: LearnedSigmaOptions, data_dim: int) -> nn.Module:
    """One learned σ shared by every pixel, starting at ``opts.sigma``."""
    return Gaussian(data_dim, opts.sigma, "global", opts.floor)


@LIKELIHOODS.register("gaussian-fixed", options=FixedSigmaOptions)
def gaussian_fixed(cfg: ModelConfig, opts: FixedSigmaOptions, data_dim: int) -> nn.Module:
    return Gaussian(data_dim, opts.sigma, "fixed", 0.0)


@LIKELIHOODS.register("gaussian-pixel", options=LearnedSigmaOptions)
def gaussian_pixel(cfg: ModelConfig, opts: LearnedSigmaOptions, data_dim: int) -> nn.Module:
    """One learned σ per pixel, each starting at ``opts.sigma``."""
    return Gaussian(data_dim, opts.sigma, "pixel", opts.floor)
