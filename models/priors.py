"""Priors p(z). Each is a module whose call returns a distribution with
``batch_shape == []`` and ``event_shape == [latent_dim]``, so that it broadcasts
over the data plate (and over a particle plate when one is added)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.registry import Registry

PRIORS: Registry = Registry("prior")


class StandardNormal(nn.Module):
    """z ~ N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers follow the module to its device.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


@PRIORS.register("normal")
def standard_normal(cfg: ModelConfig, data_dim: int, guide: nn.Module) -> nn.Module:
    return StandardNormal(cfg.latent_dim)
