"""Frozen configuration dataclasses, documented field by field, with JSON round-trips.

A run folder's ``config.json`` holds one :class:`RunConfig`; it is everything
needed to rebuild the model and to resume the fit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Type, TypeVar

from pyro_vae.files import atomic_write

C = TypeVar("C")


@dataclass(frozen=True)
class ModelConfig:
    """What the generative story and its guide are built from."""

    latent_dim: int = 2
    """Dimension of z."""
    hidden_sizes: tuple[int, ...] = (256, 128)
    """Encoder MLP widths (also the automatic guide's); the MLP decoder mirrors them unless
    its own ``hidden`` option is given."""
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
    options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Settings of the parts, by kind and part name, e.g. ``{"prior": {"mixture":
    {"components": 10}}}``. Each part declares its settings and their defaults beside its
    builder (``Registry.register(name, options=...)``); what is not given takes the default."""


@dataclass(frozen=True)
class DataConfig:
    """Which images to fit and how to prepare them."""

    name: str = "digits"
    """A name in ``DATASETS``, the path of an ``.npz``/``.npy`` file, or a folder of image files."""
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
    labels: int | None = None
    """Training labels a semi-supervised story keeps (``--labels N``): N rows, balanced across
    classes and chosen by the fit's seed; the rest, and every validation and test label, are
    hidden from the story. ``None`` keeps every training label."""
    stream: str = "auto"
    """Whether the training images of a ``.npy`` file or an image folder stay in it and are
    read batch by batch (``on``), are held in memory (``off``), or ``auto``: on when they would
    take more than ``pyro_vae.data.STREAM_SHARE`` of the available memory as float32. A run
    records the choice made (``on`` or ``off``) in config.json."""


@dataclass(frozen=True)
class TrainConfig:
    """How the fit runs."""

    epochs: int = 1000
    """Passes over the training images."""
    batch_size: int = 128
    """Images per SVI step."""
    lr: float = 1e-3
    """Adam's base learning rate; ``lr_schedule`` sets each epoch's rate from it."""
    clip_norm: float | None = None
    """Clip the gradient's global norm to this; ``None`` leaves it unclipped."""
    seed: int = 0
    """Seeds parameter initialization, batching and every Monte Carlo draw."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    objective: str = "elbo-auto"
    """Training loss, a name in ``OBJECTIVES``. The default is Pyro's ``Trace_ELBO`` traced
    by ``torch.jit`` (``elbo-jit``: the same loss and gradients as ``elbo``, faster per
    step); a fit planned for at least 22,000 steps switches after its first 2,000 to the
    whole step compiled as one program (``elbo-compile``'s, checked against the eager step;
    20-40 s of compiling, then 1.1-1.4× faster steps on a CPU). A model whose Python
    control flow depends on tensor values is detected and trained untraced."""
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
    precision: str = "fp32"
    """Arithmetic of the training steps' matrix products, a name in
    ``pyro_vae.infer.PRECISIONS``: ``fp32``, ``fp32-medium`` (torch's float32 matmul
    precision ``"medium"`` during the steps) or ``bf16`` (linear and conv layers compute
    in bfloat16 under autocast and return float32; parameters, optimizer state, the
    products inside distributions, log-densities and the loss stay float32). The
    validation ELBO and evaluation are float32 whatever this says."""
    lr_schedule: str = "constant"
    """How the rate moves over the epochs, a name in ``pyro_vae.infer.schedules.SCHEDULES``:
    ``constant`` (``lr`` throughout), ``burda`` (3^i epochs at lr·10^(−i/7), i = 0…7: 3,280
    epochs; a fit of fewer runs its first epochs, more are refused), ``step``, ``cosine``
    (over ``epochs``) or ``plateau`` (on the validation ELBO). Each epoch's rate is computed
    from ``lr``, the epoch and the history of epochs, so a resumed fit has the same rates and
    a resume with another ``lr`` applies the rest of the schedule to it."""
    init: str = "default"
    """How the layers start when a fit starts from scratch, a name in
    ``pyro_vae.infer.inits.INITS``: ``default`` (as torch built them), ``normal`` (weights of the
    linear and convolution layers of model and guide ~ N(0, std²), biases 0; from ``seed``) or
    ``glorot`` (those weights ~ U(−a, a), a = gain·√(6 / (fan_in + fan_out)), biases 0)."""
    options: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Settings of the schedule and the initialization, by kind and name, e.g.
    ``{"lr_schedule": {"step": {"every": 30, "gamma": 0.5}}, "init": {"normal": {"std":
    0.01}}}``. Each declares its settings and defaults beside it (``Registry.register(name,
    options=...)``); what is not given takes the default."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's decay rates of its running means of the gradient and its square, in [0, 1)."""
    adam_eps: float = 1e-8
    """Added to the root of Adam's second moment in each update (torch's default; Burda et
    al. 2016 use 1e-4)."""
    labelled_every: int | None = None
    """For a partly labelled story: ``None`` (the default) puts labelled and unlabelled rows
    in the same shuffled batches; K >= 2 gives the labelled rows batches of their own, one at
    every K-th step (steps 1, K + 1, 2K + 1, ...; ``min(batch_size, labels)`` rows each, from
    fresh permutations of the labelled rows), the unlabelled rows once per epoch in the other
    steps. Pyro's ss-VAE example takes K = ⌊N / labels⌋ (one pass over the labels per
    epoch); a small K gives the labels more steps (``pyro_vae.infer.batches``)."""


@dataclass(frozen=True)
class StoryConfig:
    """A story (and optionally its guide) from a Python file, instead of the built-in VAE.

    In a run folder the files are copies kept beside ``config.json``; ``model`` and
    ``guide`` then name the copies, and the SHA-256 digests guard them.
    """

    model: str = ""
    """``FILE.py:NAME`` of the story or its factory; empty for the built-in VAE."""
    guide: str = "auto"
    """``auto`` (:class:`~pyro_vae.guides.AutoAmortizedGuide`) or ``FILE.py:NAME``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the factories (``--model-arg key=value``)."""
    model_source: str = ""
    """Where the story file was when the run started (for the record)."""
    guide_source: str = ""
    """Where the guide file was when the run started (for the record)."""
    model_sha256: str = ""
    """SHA-256 of the story file as copied into the run folder."""
    guide_sha256: str = ""
    """SHA-256 of the guide file as copied into the run folder."""
    map_site: str = ""
    """The latent site the latent-map figure shows; empty: the guide's first."""


@dataclass(frozen=True)
class TrackConfig:
    """Experiment trackers that receive the fit's per-epoch records besides metrics.jsonl
    (docs/tracking.md). They change nothing that is fitted."""

    loggers: tuple[str, ...] = ()
    """Names in ``pyro_vae.runs.LOGGERS`` (``tensorboard``, ``mlflow``, ``csv``), in the
    order given; ``train --resume`` keeps them and may add more."""
    mlflow_uri: str = ""
    """The MLflow tracking URI (a server, ``sqlite:///...``, a ``file:`` folder); empty:
    the file store ``mlruns/`` inside the run folder."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run folder's ``config.json`` records."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    story: StoryConfig = field(default_factory=StoryConfig)
    """A story file; when ``story.model`` is empty, ``model`` builds the built-in VAE."""
    image_shape: tuple[int, ...] = ()
    """Shape of one image (e.g. ``(8, 8)``); filled in once the data is loaded."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """Where the per-epoch records go besides metrics.jsonl (runs written before pyro-vae
    tracked experiments read as none)."""


# What the items of a tuple field may be in JSON, and what they are called in an error.
_TUPLE_ITEMS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "integers"), "float": ((int, float), "numbers"), "str": ((str,), "strings")}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _check_value(where: str, annotation: str, value: Any) -> Any:
    """``value`` as the field annotated ``annotation`` (e.g. ``"float | None"``) wants it,
    or a ValueError naming ``where``; tuples arrive from JSON as lists."""
    if annotation.startswith("tuple["):
        items = annotation[len("tuple["):-1].split(",")  # "int, ...", "float, float", "str, ..."
        item = items[0].strip()
        allowed, noun = _TUPLE_ITEMS.get(item, _TUPLE_ITEMS["int"])
        length = None if "..." in annotation else len(items)
        if isinstance(value, (list, tuple)) and length in (None, len(value)) and all(
                isinstance(v, allowed) and not isinstance(v, bool) for v in value):
            return tuple(value)
        what = f"{'' if length is None else f'{length} '}{noun}"
        raise ValueError(f"{where}: expected a list of {what}, got {value!r}")
    if annotation.startswith("dict["):
        return _check_objects(where, annotation.count("dict["), value)
    options = [t.strip() for t in annotation.split("|")]
    if any(o not in _JSON_TYPES for o in options):  # a type this check does not know: trust it
        return value
    allowed = tuple(t for o in options for t in _JSON_TYPES[o])
    if isinstance(value, bool) and "bool" not in options or not isinstance(value, allowed):
        raise ValueError(f"{where}: expected {' or '.join(options)}, got {value!r}")
    return value


def _check_objects(where: str, depth: int, value: Any) -> dict:
    """``value`` as ``depth`` levels of JSON objects with string keys (the options'
    kind → part → field), or a ValueError naming the field ``where`` and the shape."""
    def nested(v: Any, level: int) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) for k in v) and (
            level == 1 or all(nested(inner, level - 1) for inner in v.values()))

    if not nested(value, depth):
        shape = " of ".join(["a JSON object"] + ["JSON objects"] * (depth - 1))
        raise ValueError(f"{where}: expected {shape}, got {value!r}")
    return dict(value)


def _from_dict(cls: Type[C], raw: dict[str, Any], where: str = "config") -> C:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object of {cls.__name__} fields, got {raw!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; "
                         f"{cls.__name__} has {sorted(known)}")
    values: dict[str, Any] = {}
    defaults = cls()  # type: ignore[call-arg]
    for name, value in raw.items():
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            value = _from_dict(type(current), value, f"{where}.{name}")
        else:
            value = _check_value(f"{where}.{name}", str(known[name].type), value)
        values[name] = value
    return cls(**values)  # type: ignore[call-arg]


def options_from_dict(cls: Type[C], raw: dict[str, Any], where: str) -> C:
    """A part's options dataclass from JSON-like ``raw`` (unknown keys refused)."""
    return _from_dict(cls, raw, where)


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`RunConfig`."""
    return _from_dict(RunConfig, raw)


# What a story file's run builds from ``ModelConfig``: the automatic guide's encoder. The
# built-in VAE's parts (latent_dim, prior, likelihood, guide...) do not apply to it.
AUTO_GUIDE_FIELDS = ("hidden_sizes", "activation")


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    """``config`` as config.json holds it: a story file's run keeps of ``model`` only what
    its guide is built from (the rest takes its default when read back)."""
    raw = dataclasses.asdict(config)
    story = config.story.model
    if ":" in story or story.endswith(".py"):
        kept = AUTO_GUIDE_FIELDS if config.story.guide == "auto" else ()
        raw["model"] = {k: raw["model"][k] for k in kept}
    return raw


def save_run_config(config: RunConfig, path: Path) -> None:
    """Write ``config.json`` atomically: a reader (evaluate on a run being resumed) sees the
    old file or the new one, never half of one."""
    atomic_write(Path(path), (json.dumps(run_config_to_dict(config), indent=2) + "\n").encode())


def load_run_config(path: Path, migrate: Callable[[dict], dict] | None = None) -> RunConfig:
    """The run config in ``path``; ``migrate`` rewrites the raw JSON of an older version first."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no config.json at {path}: is this a pyro-vae run folder?") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    try:
        return run_config_from_dict(migrate(raw) if migrate and isinstance(raw, dict) else raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
