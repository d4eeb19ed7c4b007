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
from pyro_vae.guides import (
    AmortizedGuide,
    AuxiliaryGuide,
    Classifier,
    ClassifierGuide,
    ConditionalGuide,
    DiagonalNormalHead,
    MeanCode,
    MLPEncoder,
    StackedGuide,
)
from pyro_vae.models import (
    M2,
    AuxiliaryM2,
    ConditionalVAE,
    GaussianCode,
    LabelPrior,
    StackedM2,
    mlp,
)
from pyro_vae.registry import Registry
from pyro_vae.stories.build import build_part
from pyro_vae.weights import Weights, freeze

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


@STORIES.register("m1m2")
def stacked(cfg: ModelConfig, data_dim: int, classes: int = 10, alpha: float = 46.0,
            z2: int = 50, width: int = 500, m1: Weights | None = None, freeze_m1: bool = True,
            draws: bool = False, keep: tuple[int, ...] | None = None
            ) -> tuple[nn.Module, nn.Module]:
    """M1 + M2: M2's story of the code z1 of a VAE (M1) whose decoder draws the image.
    M1's parts are the configured decoder, likelihood, encoder and guide (``--latent-dim``
    is z1's size); M2's networks are softplus MLPs of one hidden layer of ``width``, z2 its
    style. ``--model-arg m1=RUN`` starts M1 from a fitted VAE run of the same flags and,
    with ``freeze_m1`` (the default), holds it fixed: Kingma et al.'s two-stage fit. With
    ``draws`` M2's classifier is fitted on draws of q(z1 | x), not on its mean. ``keep``
    (indices of z1, e.g. M1's active dimensions) is the part of the code M2 tells the story
    of; the other dimensions keep M1's prior."""
    for key, value in (("classes", classes), ("z2", z2), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--model-arg {key}={value!r}: m1m2 needs a positive whole number")
    for key, flag in (("freeze_m1", freeze_m1), ("draws", draws)):
        if not isinstance(flag, bool):
            raise ValueError(f"--model-arg {key}={flag!r}: True or False")
    m1_guide = _guide(cfg, data_dim)
    if not getattr(m1_guide.head, "scores_any_z", False):
        raise ValueError(f"m1m2's classifier reads the mean of M1's q(z1 | x), which the "
                         f"{cfg.guide} guide has in no closed form; use --guide diagonal")
    decoder = build_part(cfg, "decoder", data_dim)
    likelihood = build_part(cfg, "likelihood", data_dim)
    if m1 is not None:
        for part, prefix in ((decoder, "model.decoder."), (likelihood, "model.likelihood."),
                             (m1_guide, "guide.")):
            m1.load(part, prefix)
            if freeze_m1:
                freeze(part)
    d, wide = _kept(keep, cfg.latent_dim), z2 + classes
    classifier = Classifier(MLPEncoder(d, (width,), "softplus"), classes)
    code_model = M2(mlp(wide, (width,), 2 * d, "softplus"),
                    GaussianCode(keep=keep, dim=cfg.latent_dim), classifier, z2, classes, alpha)
    code_guide = ClassifierGuide(classifier, MLPEncoder(d + classes, (width,), "softplus"),
                                 DiagonalNormalHead(width, z2), classes)
    code = MeanCode(m1_guide, keep)
    return (StackedM2(code_model, decoder, likelihood, code, draws),
            StackedGuide(m1_guide, code_guide, code, draws))


@STORIES.register("adgm")
def auxiliary(cfg: ModelConfig, data_dim: int, classes: int = 10, alpha: float = 46.0,
              aux: int | None = None) -> tuple[nn.Module, nn.Module]:
    """The auxiliary deep generative model (Maaløe et al. 2016): M2 with an auxiliary latent
    a of ``aux`` dimensions (z's, ``--latent-dim``, when left out; the paper has 100 of
    each), drawn by the guide first, q(a | x), and told last by the story, p(a | x, z, y).
    The classifier q(y | a, x) and q(z | a, y, x) read [x, a]. Every network has the
    configured hidden sizes and activation; train with ``--objective enum``, the default."""
    a = cfg.latent_dim if aux is None else aux
    if isinstance(a, bool) or not isinstance(a, int) or a < 1:
        raise ValueError(f"--model-arg aux={aux!r}: adgm needs a positive whole number")
    encoder = build_part(cfg, "encoder", data_dim)
    posterior = AmortizedGuide(encoder, DiagonalNormalHead(encoder.out_features, a))
    classifier = Classifier(build_part(cfg, "encoder", data_dim + a), classes)
    wide = dataclasses.replace(cfg, latent_dim=cfg.latent_dim + classes)
    m2 = M2(build_part(wide, "decoder", data_dim), build_part(cfg, "likelihood", data_dim),
            classifier, cfg.latent_dim, classes, alpha)
    p_a = nn.Sequential(mlp(data_dim + cfg.latent_dim + classes, cfg.hidden_sizes, 2 * a,
                            cfg.activation), GaussianCode())
    z_encoder = build_part(cfg, "encoder", data_dim + a + classes)
    m2_guide = ClassifierGuide(classifier, z_encoder,
                               DiagonalNormalHead(z_encoder.out_features, cfg.latent_dim), classes)
    return AuxiliaryM2(m2, p_a, posterior), AuxiliaryGuide(posterior, m2_guide)


def _kept(keep: object, latent_dim: int) -> int:
    """How many of z1's dimensions M2 reads: ``latent_dim``, or ``len(keep)`` once ``keep`` is
    checked to be distinct indices below it (else a ``ValueError`` in one line)."""
    if keep is None:
        return latent_dim
    if (not isinstance(keep, (tuple, list)) or not keep
            or any(isinstance(i, bool) or not isinstance(i, int) for i in keep)
            or len(set(keep)) < len(keep) or not all(0 <= i < latent_dim for i in keep)):
        raise ValueError(f"--model-arg keep={keep!r}: m1m2 needs distinct indices of z1 "
                         f"(0 to {latent_dim - 1}), e.g. keep=(0,3,7)")
    return len(keep)


# A shipped story whose guide enumerates a discrete site trains with the objective that sums it.
semi_supervised.objective = "enum"  # type: ignore[attr-defined]
stacked.objective = "enum"  # type: ignore[attr-defined]
auxiliary.objective = "enum"  # type: ignore[attr-defined]
# The keywords that name a fitted run, whose checkpoint the engine reads into Weights.
stacked.weights = ("m1",)  # type: ignore[attr-defined]


def default_objective(spec: str | None) -> str | None:
    """The objective a shipped story asks for (``--objective`` left out), if any."""
    if spec is None or not is_named(spec):
        return None
    return getattr(STORIES.lookup(spec), "objective", None)


def is_named(spec: str) -> bool:
    """Whether ``--model`` names a shipped story (not ``FILE.py:NAME``, nor a file whose
    ``:NAME`` was left off, which :func:`pyro_vae.stories.parse_spec` then asks for)."""
    return ":" not in spec and not spec.endswith(".py")
