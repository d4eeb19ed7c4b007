"""Frozen configuration dataclasses, documented field by field, with JSON round-trips.

A run folder's ``config.json`` holds one :class:`RunConfig`; it is everything
needed to rebuild the model and to resume the fit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Type, TypeVar

C = TypeVar("C")


@dataclass(frozen=True)
class ModelConfig:
    """What the generative story and its guide are built from."""

    latent_dim: int = 2
    """Dimension of z."""
    hidden_sizes: tuple[int, ...] = (256, 128)
    """Encoder MLP widths; the decoder uses them reversed."""
    activation: str = "relu"
    """Nonlinearity between hidden layers (a name in ``ACTIVATIONS``)."""
    prior: str = "normal"
    """p(z), a name in ``PRIORS``."""
    likelihood: str = "bernoulli"
    """p(x | f(z)), a name in ``LIKELIHOODS``."""
    decoder: str = "mlp"
    """f_θ, a name in ``DECODERS``."""
    encoder: str = "mlp"
    """Encoder body of the guide, a name in ``ENCODERS``."""
    guide: str = "diagonal"
    """q_φ(z | x), a name in ``GUIDES``."""
    sigma: float = 0.1
    """Gaussian likelihoods: the fixed σ, or the starting σ when it is learned."""
    sigma_floor: float = 0.01
    """Gaussian likelihoods with learned σ: σ never falls below this."""
    scale_floor: float = 1e-3
    """Guides: the posterior scale is softplus(·) plus this floor."""
    components: int = 10
    """Mixture-type priors: number of components (or pseudo-inputs)."""
    flow_layers: int = 2
    """Flow priors and guides: number of transforms."""


@dataclass(frozen=True)
class DataConfig:
    """Which images to fit and how to prepare them."""

    name: str = "digits"
    """A name in ``DATASETS`` or the path of an ``.npz``/``.npy`` file."""
    root: str | None = None
    """Folder holding torchvision datasets; else ``$PYRO_VAE_DATA``, else a per-user cache."""
    download: bool = False
    """Let torchvision download missing files."""
    binarize: str = "auto"
    """``dynamic`` (fresh Bernoulli draw each epoch), ``threshold`` (x > 0.5), ``none``,
    or ``auto``: dynamic for a binary likelihood, none otherwise."""
    val_fraction: float = 0.1
    """Share of the training images held out for validation."""
    test_fraction: float = 0.1
    """Share held out for testing where the dataset has no official test split."""
    split_seed: int = 0
    """Seed of the train/validation/test split (independent of the fit's seed)."""


@dataclass(frozen=True)
class TrainConfig:
    """How the fit runs."""

    epochs: int = 1000
    """Passes over the training images."""
    batch_size: int = 128
    """Images per SVI step."""
    lr: float = 1e-3
    """Adam learning rate."""
    clip_norm: float | None = None
    """Clip the gradient's global norm to this; ``None`` leaves it unclipped."""
    seed: int = 0
    """Seeds parameter initialization, batching and every Monte Carlo draw."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    objective: str = "elbo"
    """Training loss, a name in ``OBJECTIVES``."""
    particles: int = 1
    """Monte Carlo samples of z per image in the objective."""
    beta: float = 1.0
    """Weight of the KL-type terms (the latent site), applied with ``poutine.scale``."""
    kl_warmup: int = 0
    """Epochs over which that weight rises linearly from 0 to ``beta``."""
    early_stopping: int | None = None
    """Stop after this many epochs without a better validation ELBO."""
    val_every: int = 1
    """Evaluate the validation ELBO every this many epochs (and at the last)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run folder's ``config.json`` records."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    image_shape: tuple[int, ...] = ()
    """Shape of one image (e.g. ``(8, 8)``); filled in once the data is loaded."""


def _from_dict(cls: Type[C], raw: dict[str, Any]) -> C:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    values: dict[str, Any] = {}
    defaults = cls()  # type: ignore[call-arg]
    for name, value in raw.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            value = _from_dict(type(current), value)
        elif isinstance(current, tuple) or name in ("hidden_sizes", "image_shape"):
            value = tuple(value)
        values[name] = value
    return cls(**values)  # type: ignore[call-arg]


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`RunConfig`."""
    return _from_dict(RunConfig, raw)


def save_run_config(config: RunConfig, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def load_run_config(path: Path) -> RunConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no config.json at {path}: is this a pyro-vae run folder?") from None
    return run_config_from_dict(raw)
