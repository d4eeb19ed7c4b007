"""Assemble a model and its guide: the built-in VAE from a :class:`ModelConfig` through
the registries, or a story (and guide) from a file (:mod:`pyro_vae.stories`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Mapping

import pyro
import torch
from torch import nn

from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.data import Data
from pyro_vae.guides import ENCODERS, GUIDES, AutoAmortizedGuide, MLPEncoder
from pyro_vae.models import DECODERS, LIKELIHOODS, PRIORS, VAE
from pyro_vae.pixels import Pixels, scored_pixels
from pyro_vae.programs import Program, as_program, seeded
from pyro_vae.registry import Registry
from pyro_vae.stories.loader import (
    StoryError,
    call_factory,
    check_model_args,
    check_story,
    factory_keywords,
    load_object,
    parse_spec,
    sha256_of,
)
from pyro_vae.stories.trust import check_trusted
from pyro_vae.traces import slice_rows

PARTS = {"prior": PRIORS, "likelihood": LIKELIHOODS, "decoder": DECODERS, "encoder": ENCODERS,
         "guide": GUIDES}


def part_options(cfg: ModelConfig, kind: str) -> object:
    """The options of the ``kind`` part that ``cfg`` chose: its defaults and what ``cfg.options``
    gives for it (checked)."""
    name = getattr(cfg, kind)
    return PARTS[kind].options(name, cfg.options.get(kind, {}).get(name))


def check_model_config(cfg: ModelConfig) -> None:
    """Refuse unknown names, options and impossible sizes before anything is built."""
    for kind, registry in PARTS.items():
        registry.lookup(getattr(cfg, kind))
        part_options(cfg, kind)
        for name in cfg.options.get(kind, {}):
            registry.lookup(name)
    if cfg.latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {cfg.latent_dim}")
    if any(h < 1 for h in cfg.hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {list(cfg.hidden_sizes)}")


def build_vae(cfg: ModelConfig, data_dim: int, seed: int | None = None,
              image_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, nn.Module]:
    """The model ``VAE(prior, decoder, likelihood)`` and its amortized guide.

    Args:
        cfg: names and sizes of the parts.
        data_dim: D, the number of pixels per image.
        seed: when given, parameters are initialized from this seed without
            touching the caller's random state.
        image_shape: one image's shape (``[C, H, W]`` or ``[H, W]``) for convolutional
            encoders and decoders; without it they take square images from D.
    """
    check_model_config(cfg)
    # Builders that read the shape take it by keyword; it is only passed when known.
    shape = {} if image_shape is None else {"image_shape": tuple(image_shape)}
    with seeded(seed):
        encoder = build_part(cfg, "encoder", data_dim, **shape)
        guide = build_part(cfg, "guide", encoder)
        prior = build_part(cfg, "prior", data_dim, guide)
        decoder = build_part(cfg, "decoder", data_dim, **shape)
        likelihood = build_part(cfg, "likelihood", data_dim)
    return VAE(prior, decoder, likelihood), guide


def build_part(cfg: ModelConfig, kind: str, *args, **kwargs) -> nn.Module:
    """The chosen ``kind`` part, built by its registered builder with its own options."""
    return PARTS[kind].lookup(getattr(cfg, kind))(cfg, part_options(cfg, kind), *args, **kwargs)


def build_story(cfg: RunConfig, folder: Path | None, data_dim: int,
                image_shape: tuple[int, ...], seed: int | None = None, *,
                trust: bool = False) -> Program:
    """The story of ``cfg.story``, built by its factory. With a run ``folder``, its file is
    the folder's copy, checked against the recorded SHA-256 and this user's trust file
    (``trust`` trusts it and records it) before it is imported."""
    path, name, digest = _story_file(cfg.story.model, cfg.story.model_sha256, folder, "--model",
                                     trust)
    offered = {"data_dim": data_dim, "image_shape": tuple(image_shape), **cfg.story.args}
    factory = load_object(path, name, digest)
    if folder is None:  # a new fit; a run's recorded pairs were checked when it was trained
        check_model_args(cfg.story.args, _args_takers(cfg, path, name, factory))
    with seeded(seed):
        story = call_factory(factory, path, name, offered)
    return as_program(story, name=f"{path}:{name}")


def _args_takers(cfg: RunConfig, path: Path, name: str, factory: object) -> dict:
    """``--model-arg`` pairs go to the story's factory and to a guide file's: the keywords
    of each (the guide file is read here for its signature, and built later)."""
    takers = {f"{path}:{name}": factory_keywords(factory)}
    if cfg.story.guide not in ("auto", "story"):
        guide_path, guide_name = parse_spec(cfg.story.guide, "--guide")
        takers[f"{guide_path}:{guide_name}"] = factory_keywords(load_object(guide_path, guide_name))
    return takers


def build_story_guide(cfg: RunConfig, folder: Path | None, model: Program, data: Data,
                      seed: int | None = None, own: nn.Module | None = None, *,
                      trust: bool = False) -> Program:
    """``auto`` (an :class:`AutoAmortizedGuide` on an MLP encoder of ``cfg.model.hidden_sizes``),
    ``story`` (``own``, the guide a shipped story comes with) or the guide file's object,
    built on rows of the training data. A guide file in a run ``folder`` is checked as
    :func:`build_story` checks the story's."""
    # Two numbers of rows: a shape error hides where the rows happen to match another size.
    check_story(model, data.train.x[:7], slice_rows(data.train.fields(), 0, 7), model.name)
    x, batch = data.train.x[:8], slice_rows(data.train.fields(), 0, 8)
    check_story(model, x, batch, model.name)
    if cfg.story.guide == "story":
        if own is None:
            raise StoryError(f"{model.name} comes with no guide of its own; use --guide auto")
        return as_program(own, name=f"{model.name} guide")
    with seeded(seed):
        if cfg.story.guide == "auto":
            encoder = MLPEncoder(data.data_dim, cfg.model.hidden_sizes, cfg.model.activation)
            try:
                guide = AutoAmortizedGuide(model, encoder, x, **batch)
            except ValueError as err:
                raise StoryError(f"{model.name}: {err}") from None
            return as_program(guide, name="auto")
        path, name, digest = _story_file(cfg.story.guide, cfg.story.guide_sha256, folder,
                                         "--guide", trust)
        offered = {"model": model, "data_dim": data.data_dim,
                   "image_shape": tuple(data.image_shape), **cfg.story.args}
        guide = call_factory(load_object(path, name, digest), path, name, offered)
    return as_program(guide, name=f"{path}:{name}")


def story_is_binary(model: Program, data_dim: int, batch: dict) -> Pixels:
    """What the story's image site scores: true exactly when x in {0, 1} only (so
    ``--binarize auto`` draws); :attr:`Pixels.EIGHT_BIT` (false) for 8-bit pixels, which
    the data split then checks."""
    x = torch.zeros(2, data_dim)
    with pyro.validation_enabled(False):  # zeros stand in for pixels of unknown range
        trace = check_story(model, x, batch, model.name)
    return scored_pixels(trace, x)


def check_run_story_files(cfg: RunConfig, folder: Path, trust: bool = False) -> None:
    """Before anything else is loaded: the run ``folder``'s story and guide files (if it has
    them) match config.json and are trusted by this user (``trust``: trust and record them).
    Nothing is imported."""
    if ":" in cfg.story.model:  # a file, not a shipped story's name
        _story_file(cfg.story.model, cfg.story.model_sha256, folder, "--model", trust)
    if ":" in cfg.story.guide:
        _story_file(cfg.story.guide, cfg.story.guide_sha256, folder, "--guide", trust)


def _story_file(spec: str, sha256: str, folder: Path | None, what: str, trust: bool
                ) -> tuple[Path, str, str | None]:
    """(path, name, digest to import it under): a file named on the command line as it is
    (the user chose it); a run folder's copy only if it matches config.json's SHA-256 and
    this user trusts it."""
    path, name = parse_spec(spec, what)
    if folder is None:
        return path, name, None
    path = Path(folder) / path
    if not path.is_file():
        raise StoryError(f"{path}: no such story file (config.json names it)")
    digest = sha256_of(path)
    if sha256 and digest != sha256:
        raise StoryError(f"{path} has changed since the run was trained (its SHA-256 no "
                         f"longer matches config.json); the run cannot be rebuilt from it")
    check_trusted(path, digest, trust)
    return path, name, digest




def option_fields(parts: Mapping[str, Registry] = PARTS
                  ) -> Iterator[tuple[str, str, dataclasses.Field]]:
    """Every option declared in ``parts`` (by default the model's): (kind, part name,
    dataclass field), in registry order."""
    for kind, registry in parts.items():
        for name, cls in registry.options_of.items():
            for f in dataclasses.fields(cls):
                yield kind, name, f


def with_options(cfg: ModelConfig, **shared: object) -> ModelConfig:
    """``cfg`` with shared settings applied to every part that declares them under that
    alias (``components=3`` sets the mixture's and the VampPrior's), chosen or not;
    settings ``cfg.options`` already holds are kept."""
    options = {kind: {name: dict(v) for name, v in parts.items()}
               for kind, parts in cfg.options.items()}
    for kind, name, f in option_fields():
        alias = f.metadata.get("alias")
        if alias in shared:
            options.setdefault(kind, {}).setdefault(name, {}).setdefault(f.name, shared[alias])
    unknown = set(shared) - {f.metadata.get("alias") for _, _, f in option_fields()}
    if unknown:
        raise ValueError(f"no part declares the shared settings {sorted(unknown)}")
    return dataclasses.replace(cfg, options=options)


def migrate_model_config(raw: dict) -> dict:
    """A run config's JSON from pyro-vae 0.1.0, whose model section held the parts' settings as
    shared fields (``components``, ``flow_layers``, ``sigma``, ``sigma_floor``, ``scale_floor``):
    each becomes the option of the chosen parts that declare it under that alias."""
    model = raw.get("model")
    aliases = {f.metadata.get("alias") for _, _, f in option_fields()} - {None}
    if not isinstance(model, dict) or not aliases & set(model):
        return raw
    model = dict(model)
    shared = {k: model.pop(k) for k in sorted(aliases & set(model))}
    options: dict = {}
    for kind, name, f in option_fields():
        if model.get(kind, getattr(ModelConfig(), kind)) == name and f.metadata.get("alias") in shared:
            options.setdefault(kind, {}).setdefault(name, {})[f.name] = shared[f.metadata["alias"]]
    return {**raw, "model": {**model, "options": options}}
