"""Assemble a model and its guide: the built-in VAE from a :class:`ModelConfig` through
the registries, or a story (and guide) from a file (:mod:`pyro_vae.stories`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pyro
import torch
from torch import nn
from torch.distributions import constraints

from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.data import Data
from pyro_vae.guides import ENCODERS, GUIDES, AutoAmortizedGuide, MLPEncoder
from pyro_vae.models import DECODERS, LIKELIHOODS, PRIORS, VAE
from pyro_vae.programs import Program, as_program
from pyro_vae.stories import (StoryError, call_factory, check_story, load_object, parse_spec,
                              sha256_of)
from pyro_vae.traces import image_site, trace_program


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
    with _seeded(seed):
        encoder = ENCODERS.lookup(cfg.encoder)(cfg, data_dim)
        guide = GUIDES.lookup(cfg.guide)(cfg, encoder)
        prior = PRIORS.lookup(cfg.prior)(cfg, data_dim, guide)
        decoder = DECODERS.lookup(cfg.decoder)(cfg, data_dim)
        likelihood = LIKELIHOODS.lookup(cfg.likelihood)(cfg, data_dim)
    return VAE(prior, decoder, likelihood), guide


def build_story(cfg: RunConfig, folder: Path | None, data_dim: int,
                image_shape: tuple[int, ...], seed: int | None = None) -> Program:
    """The story of ``cfg.story`` (its file resolved against the run ``folder`` when
    given, and checked against the recorded SHA-256), built by its factory."""
    path, name = _story_file(cfg.story.model, cfg.story.model_sha256, folder, "--model")
    offered = {"data_dim": data_dim, "image_shape": tuple(image_shape), **cfg.story.args}
    with _seeded(seed):
        story = call_factory(load_object(path, name), path, name, offered)
    return as_program(story, name=f"{path.name}:{name}")


def build_story_guide(cfg: RunConfig, folder: Path | None, model: Program, data: Data,
                      seed: int | None = None) -> Program:
    """``auto`` (an :class:`AutoAmortizedGuide` on an MLP encoder of ``cfg.model.hidden_sizes``)
    or the guide file's object, built on rows of the training data."""
    x, batch = data.train.x[:8], {k: v[:8] for k, v in data.train.fields().items()}
    check_story(model, x, batch, model.name)
    with _seeded(seed):
        if cfg.story.guide == "auto":
            encoder = MLPEncoder(data.data_dim, cfg.model.hidden_sizes, cfg.model.activation)
            try:
                guide = AutoAmortizedGuide(model, encoder, x, **batch)
            except ValueError as err:
                raise StoryError(f"{model.name}: {err}") from None
            return as_program(guide, name="auto")
        path, name = _story_file(cfg.story.guide, cfg.story.guide_sha256, folder, "--guide")
        offered = {"model": model, "data_dim": data.data_dim,
                   "image_shape": tuple(data.image_shape), **cfg.story.args}
        guide = call_factory(load_object(path, name), path, name, offered)
    return as_program(guide, name=f"{path.name}:{name}")


def story_is_binary(model: Program, data_dim: int, batch: dict) -> bool:
    """Whether the story's image site scores x in {0, 1} only (so ``--binarize auto`` draws)."""
    x = torch.zeros(2, data_dim)
    with pyro.validation_enabled(False):
        trace = trace_program(model, x, batch)
    support = trace.nodes[image_site(trace, x)]["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.boolean


def _story_file(spec: str, sha256: str, folder: Path | None, what: str) -> tuple[Path, str]:
    path, name = parse_spec(spec, what)
    if folder is not None:
        path = Path(folder) / path
        if sha256 and sha256_of(path) != sha256:
            raise StoryError(f"{path} has changed since the run was trained (its SHA-256 no "
                             f"longer matches config.json); the run cannot be rebuilt from it")
    return path, name


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Parameters initialized from ``seed`` without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield
