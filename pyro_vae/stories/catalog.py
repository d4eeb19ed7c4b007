"""Stories that pyro-vae ships, chosen by name: ``pyro-vae train --model label-prior``.

Each entry of :data:`STORIES` builds a story and its own guide from the built-in parts
(decoder, likelihood, encoder, guide head, chosen and configured as for the VAE), with
``--model-arg`` values as keywords. Labels reach these stories as the per-row field ``y``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.guides import Classifier, ClassifierGuide, ConditionalGuide, DiagonalNormalHead
from pyro_vae.models import M2, ConditionalVAE, LabelPrior
from pyro_vae.registry import Registry
from pyro_vae.stories.build import build_part

STORIES: Registry = Registry("story")
StoryBuilder = Callable[..., tuple[nn.Module, nn.Module]]


def _guide(cfg: ModelConfig, data_dim: int) -> nn.Module:
    """The configured amortized guide q(z | x) (encoder and head from the registries)."""
    return build_part(cfg, "guide", build_part(cfg, "encoder", data_dim))


@STORIES.register("label-prior")
def label_prior(cfg: ModelConfig, data_dim: int, classes: int = 10
                ) -> tuple[nn.Module, nn.Module]:
    """z ~ N(μ_y, diag σ_y²) per class, x ~ p(x | f(z)); the guide q(z | x) is the VAE's."""
    story = LabelPrior(build_part(cfg, "decoder", data_dim), build_part(cfg, "likelihood", data_dim),
                       cfg.latent_dim, classes)
    return story, _guide(cfg, data_dim)


@STORIES.register("cvae")
def conditional_vae(cfg: ModelConfig, data_dim: int, classes: int = 10
                    ) -> tuple[nn.Module, nn.Module]:
    """z ~ N(0, I), x ~ p(x | f(z, y)); the guide q(z | x, y) reads the label too."""
    wide = dataclasses.replace(cfg, latent_dim=cfg.latent_dim + classes)
    story = ConditionalVAE(build_part(wide, "decoder", data_dim),
                           build_part(cfg, "likelihood", data_dim), cfg.latent_dim, classes)
    encoder = build_part(cfg, "encoder", data_dim + classes)
    head = DiagonalNormalHead(encoder.out_features, cfg.latent_dim)
    return story, ConditionalGuide(encoder, head, classes)


@STORIES.register("m2")
def semi_supervised(cfg: ModelConfig, data_dim: int, classes: int = 10, alpha: float = 46.0
                    ) -> tuple[nn.Module, nn.Module]:
    """M2: y ~ Cat, z ~ N(0, I), x ~ p(x | f(z, y)), y a latent where its label is hidden;
    the guide is a classifier q(y | x) beside q(z | x, y). Train with ``--objective enum``
    (the default for this story) and keep a few labels with ``--labels N``."""
    wide = dataclasses.replace(cfg, latent_dim=cfg.latent_dim + classes)
    classifier = Classifier(build_part(cfg, "encoder", data_dim), classes)
    story = M2(build_part(wide, "decoder", data_dim), build_part(cfg, "likelihood", data_dim),
               classifier, cfg.latent_dim, classes, alpha)
    encoder = build_part(cfg, "encoder", data_dim + classes)
    head = DiagonalNormalHead(encoder.out_features, cfg.latent_dim)
    return story, ClassifierGuide(classifier, encoder, head, classes)


# A shipped story whose guide enumerates a discrete site trains with the objective that sums it.
semi_supervised.objective = "enum"  # type: ignore[attr-defined]


def default_objective(spec: str | None) -> str | None:
    """The objective a shipped story asks for (``--objective`` left out), if any."""
    if spec is None or not is_named(spec):
        return None
    return getattr(STORIES.lookup(spec), "objective", None)


def is_named(spec: str) -> bool:
    """Whether ``--model`` names a shipped story (not ``FILE.py:NAME``, nor a file whose
    ``:NAME`` was left off, which :func:`pyro_vae.stories.parse_spec` then asks for)."""
    return ":" not in spec and not spec.endswith(".py")
