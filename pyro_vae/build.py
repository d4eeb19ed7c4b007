"""Assemble a model and its guide from a :class:`ModelConfig`, through the registries."""

from __future__ import annotations

import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.guides import ENCODERS, GUIDES
from pyro_vae.models import DECODERS, LIKELIHOODS, PRIORS, VAE


def check_model_config(cfg: ModelConfig) -> None:
    """Refuse unknown names and impossible sizes before anything is built."""
    for registry, name in ((PRIORS, cfg.prior), (LIKELIHOODS, cfg.likelihood),
                           (DECODERS, cfg.decoder), (ENCODERS, cfg.encoder), (GUIDES, cfg.guide)):
        registry.lookup(name)
    if cfg.latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {cfg.latent_dim}")
    if any(h < 1 for h in cfg.hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {list(cfg.hidden_sizes)}")


def build_vae(cfg: ModelConfig, data_dim: int, seed: int | None = None) -> tuple[nn.Module, nn.Module]:
    """The model ``VAE(prior, decoder, likelihood)`` and its amortized guide.

    Args:
        cfg: names and sizes of the parts.
        data_dim: D, the number of pixels per image.
        seed: when given, parameters are initialized from this seed without
            touching the caller's random state.
    """
    check_model_config(cfg)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        encoder = ENCODERS.lookup(cfg.encoder)(cfg, data_dim)
        guide = GUIDES.lookup(cfg.guide)(cfg, encoder)
        prior = PRIORS.lookup(cfg.prior)(cfg, data_dim, guide)
        decoder = DECODERS.lookup(cfg.decoder)(cfg, data_dim)
        likelihood = LIKELIHOODS.lookup(cfg.likelihood)(cfg, data_dim)
    return VAE(prior, decoder, likelihood), guide
