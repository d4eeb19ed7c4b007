"""Run folders: a fit's config, metrics, checkpoint and figures in ``runs/<name>/``.

.. code-block:: text

    runs/<name>/config.json              everything needed to rebuild the model
    runs/<name>/metrics.jsonl            one line per epoch
    runs/<name>/checkpoint.safetensors   parameters, optimizer and fit state
    runs/<name>/*.png                    figures
    runs/<name>/tracking.json            the experiment trackers' state (train --log)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pyro_vae import distributed
from pyro_vae.config import (
    RunConfig,
    StoryConfig,
    load_run_config,
    run_config_to_dict,
    save_run_config,
)
from pyro_vae.data import (
    Data,
    RawImages,
    load_images,
    resolve_binarize,
    resolve_stream,
    split_or_stream,
)
from pyro_vae.evaluation import (
    keep_labels,
    label_probs,
    label_site,
    partly_labelled,
)
from pyro_vae.faults import point
from pyro_vae.files import atomic_write
from pyro_vae.infer import (
    FitResult,
    build_objective,
    check_batches,
    check_train_config,
    fit,
    materialize,
    resolve_device,
)
from pyro_vae.programs import Program, as_program, check_fields, seeded
from pyro_vae.runs.cadence import CHECKPOINT_EVERY, CheckpointWriter
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint, load_modules
from pyro_vae.runs.enumeration import choose_objective
from pyro_vae.runs.latents import epoch_extras
from pyro_vae.runs.lock import writer_lock
from pyro_vae.runs.pretrained import resolve_weights
from pyro_vae.runs.records import (
    CHECKPOINT,
    CONFIG,
    GUIDE_COPY,
    METRICS,
    STORY_COPY,
    WHICH,
    epoch_lines,
    metrics_matching,
    move_stale,
    scored,
    write_figures,
    write_summary,
)
from pyro_vae.runs.tracking import check_loggers, tracking, with_loggers
from pyro_vae.stories import (
    STORIES,
    build_story,
    build_story_guide,
    build_vae,
    check_model_args,
    check_run_story_files,
    factory_keywords,
    is_named,
    migrate_model_config,
    parse_spec,
    record_written,
    sha256_of,
    story_is_binary,
)
from pyro_vae.traces import latent_sites, slice_rows
from pyro_vae.validation import (
    check_image_rank,
    check_image_shape,
    check_label_range,
    check_labels,
)


@dataclass(frozen=True)
class LoadedRun:
    """A run folder brought back: its config, fitted model and guide, and data."""

    path: Path
    config: RunConfig
    model: Program
    guide: Program
    data: Data
    device: torch.device
    scored: dict = dataclasses.field(default_factory=dict)
    """Which checkpoint was loaded (``last`` or ``best``), its epoch and SHA-256: what a
    score computed from this run records."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_run` did: the fit, and the figures it wrote."""

    path: Path
    fit: FitResult
    figures: list[Path]
    before: int = 0
    """Epochs the run had finished before this call (a resumed run's checkpoint)."""


def default_run_name(cfg: RunConfig) -> str:
    data = Path(cfg.data.name).stem
    m = cfg.model
    if cfg.story.model:
        story = cfg.story.model
        if not is_named(story):
            path, name = parse_spec(story)
            story = f"{path.stem}-{name}"
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{data}-{story}"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{data}-{m.prior}-{m.guide}-z{m.latent_dim}"


def _raw_images(cfg: RunConfig) -> RawImages:
    """The run's images as loaded, checked before any work (same image size as when the run
    started)."""
    raw = load_images(cfg.data)  # the training images streamed when cfg.data.stream says so
    if cfg.image_shape:
        check_image_shape(raw.train_x.shape[1:], cfg.image_shape, raw.source,
                          "the run being resumed (config.json image_shape)")
    return raw


def _split(cfg: RunConfig, raw: RawImages, binary: bool) -> Data:
    return split_or_stream(raw, cfg.data, resolve_binarize(cfg.data.binarize, binary), binary)


def load_run_data(cfg: RunConfig, folder: Path | None = None, *, trust_story: bool = False
                  ) -> Data:
    """The run's images, split and binarized as its likelihood needs."""
    return prepare(cfg, folder, trust=trust_story)[0]


def prepare(cfg: RunConfig, folder: Path | None = None, seed: int | None = None,
            trust: bool = False) -> tuple[Data, Program, Program]:
    """The run's data, story and guide. A story file is read from ``folder`` (a run folder,
    checked against its recorded SHA-256 and this user's trust file, before anything is
    loaded; ``trust`` trusts it and records that) when given, else from where ``cfg`` says."""
    if folder is not None:
        check_run_story_files(cfg, folder, trust)
    raw = _raw_images(cfg)
    check_image_rank(raw.train_x, f"{raw.source} images")  # rows, before len() and shape[1:]
    shape = tuple(raw.train_x.shape[1:])
    dim = int(np.prod(shape))
    if raw.train_y is not None:  # before two of them are read to run the story once
        check_labels(raw.train_y, len(raw.train_x), f"{raw.source} labels")
    labels = {} if raw.train_y is None else {"y": torch.as_tensor(raw.train_y[:2]).long()}
    if not cfg.story.model:
        vae, guide = build_vae(cfg.model, dim, seed=seed, image_shape=shape)
        model = as_program(vae, "VAE")
        return (_split(cfg, raw, story_is_binary(model, dim, labels)), model,
                as_program(guide, cfg.model.guide))
    own = None
    if is_named(cfg.story.model):
        builder = STORIES.lookup(cfg.story.model)
        # cfg and data_dim come from the engine: the builder's other keywords are the pairs'.
        taken = (factory_keywords(builder) or set()) - {"cfg", "data_dim"}
        if folder is None:  # a new fit, as for a story file's factory
            check_model_args(cfg.story.args, {cfg.story.model: taken})
        with seeded(seed):
            # A run trained before pairs were checked may record one the builder does not take:
            # it is left out, as it was then.
            args = {k: v for k, v in cfg.story.args.items() if k in taken}
            args = resolve_weights(builder, args, cfg.model, restoring=folder is not None)
            story, own = builder(cfg.model, dim, **args)
        model = as_program(story, cfg.story.model)
    else:
        model = build_story(cfg, folder, dim, shape, seed, trust=trust)
    _check_story_data(model, raw)
    data = _kept_labels(cfg, model, _split(cfg, raw, story_is_binary(model, dim, labels)))
    return data, model, build_story_guide(cfg, folder, model, data, seed, own, trust=trust)


def _kept_labels(cfg: RunConfig, model: Program, data: Data) -> Data:
    """A partly labelled story sees ``--labels N`` training labels and no held-out one; any
    other story sees every label, and ``--labels`` is refused."""
    if partly_labelled(model):
        return keep_labels(data, cfg.data.labels, cfg.train.seed)
    if cfg.data.labels is not None:
        raise ValueError(f"--labels {cfg.data.labels}: {cfg.story.model or 'the built-in VAE'} "
                         f"uses every label it is given; only a partly labelled story (one "
                         f"with partly_labelled = True, e.g. --model m2) hides some")
    return data


def _check_story_data(model: Program, raw: RawImages) -> None:
    """Before the story first runs: the per-row fields it needs are in the data, and its
    labels lie in 0..classes−1 when it declares ``classes`` (a bad label is named by its row
    in the file)."""
    check_fields(model, () if raw.train_y is None else ("y",), raw.source)
    classes = getattr(model, "classes", None)
    if isinstance(classes, int):
        for labels, what in ((raw.train_y, "labels"), (raw.test_y, "test labels")):
            if labels is not None:
                check_label_range(torch.as_tensor(np.asarray(labels)), classes,
                                  f"{raw.source} {what}")


def _run_fit(path: Path, cfg: RunConfig, data: Data, model: nn.Module, guide: nn.Module,
             checkpoint=None, progress: bool = True, stop=None,
             checkpoint_every: float = CHECKPOINT_EVERY) -> TrainResult:
    world = distributed.current()  # rank 0 alone writes the folder
    before = checkpoint.state.epoch if checkpoint else 0
    fit_from = dict(state=checkpoint.state if checkpoint else None,
                    optimizer_state=checkpoint.optimizer if checkpoint else None,
                    stop=stop, progress=progress)
    if not world.writer:
        return TrainResult(path, _fit_watched(world, path, None, model, guide, data, cfg,
                                              fit_from), [], before)
    with tracking(path, cfg, path / METRICS) as tracker:
        writer = CheckpointWriter(path, CHECKPOINT, METRICS, {"config": run_config_to_dict(cfg)},
                                  checkpoint_every, epoch_extras(model, cfg), tracker.epoch,
                                  resumed=checkpoint is not None)
        result = _fit_watched(world, path, writer, model, guide, data, cfg, fit_from)
        writer.finish(nn.ModuleDict({"model": model, "guide": guide}), result.optimizer,
                      result.state)
        write_summary(path, result)
        pictures: list[Path] = []
        if not result.interrupted:
            pictures = write_figures(path, result.model, result.guide,
                                     data.to(result.model.device), result.history,
                                     cfg.train.seed, cfg.story.map_site)
        tracker.finish(pictures, len(result.history), result.interrupted)
    return TrainResult(path, result, pictures, before)


def _fit_watched(world, path: Path, writer: CheckpointWriter | None, model: nn.Module,
                 guide: nn.Module, data: Data, cfg: RunConfig, fit_from: dict) -> FitResult:
    """``fit``, with ``writer`` (rank 0's) as its epoch callback; on failure the writer keeps
    the last finished epoch, and a peer's stopped heartbeat is the error reported."""
    try:
        return fit(model, guide, data, cfg.train, callbacks=[writer] if writer else [],
                   **fit_from)
    except BaseException:
        lost = distributed.lost_ranks(world, str(path))  # None unless a peer's heartbeat stopped
        if writer is not None:  # the last finished epoch, if it is not on disk yet
            writer.fail()
        if lost is not None:
            raise lost from None
        raise


def train_run(cfg: RunConfig, out: Path = Path("runs"), name: str | None = None, *,
              progress: bool = True, stop=None, loggers: Sequence[str] = (),
              checkpoint_every: float = CHECKPOINT_EVERY) -> TrainResult:
    """Load the data, build the model, fit it, and fill a new run folder ``out/name``,
    writing its checkpoint after the first epoch and then at most every ``checkpoint_every``
    seconds (pyro_vae/runs/cadence.py; 0: after every epoch), at the end and on failure;
    ``loggers`` (names in ``LOGGERS``) are added to ``cfg.track``'s experiment trackers."""
    # Every setting is checked before the folder exists, so a mistake leaves nothing behind.
    cfg = dataclasses.replace(cfg, track=with_loggers(cfg.track, loggers))
    check_loggers(cfg.track)
    check_train_config(cfg.train)
    resolve_device(cfg.train.device)
    build_objective(cfg.train)
    sources = _story_sources(cfg.story)
    # auto becomes on or off here, recorded in config.json (a resume keeps it) and said once
    # every check has passed (an error stays one line).
    said: list[str] = []
    cfg = dataclasses.replace(cfg, data=resolve_stream(cfg.data, said.append))
    data, model, guide = prepare(cfg, None, seed=cfg.train.seed)
    cfg = dataclasses.replace(cfg, train=choose_objective(cfg.train, model, guide, data,
                                                          said.append))
    check_batches(cfg.train, data, distributed.current())
    _check_map_site(cfg.story.map_site, model, data)
    if label_site(model):  # a story that classifies by q(y | x) needs a guide that has it
        label_probs(guide, data.train.x[:2], slice_rows(data.train.fields(), 0, 2),
                    label_site(model))
    _say(*said)
    # What was used, not "auto": a resume or a reader then needs no likelihood to resolve it.
    cfg = dataclasses.replace(cfg, image_shape=tuple(data.image_shape),
                              data=dataclasses.replace(cfg.data, binarize=data.binarize))
    world = distributed.current()
    path = Path(out) / distributed.from_writer(name or default_run_name(cfg), world)
    distributed.note_folder(str(path))
    # One writer per folder (rank 0 of a data-parallel fit); a second is refused at once.
    with distributed.on_writer(world, lambda: writer_lock(_made(path))):
        cfg = distributed.agree(lambda: _fill_new_folder(path, cfg, sources), world)
        return _run_fit(path, cfg, data, model, guide, progress=progress, stop=stop,
                        checkpoint_every=checkpoint_every)


def _say(*lines: str) -> None:
    """Lines about how the fit runs, on stderr, from the process that writes the run."""
    if distributed.current().writer:
        for line in lines:
            print(line, file=sys.stderr)


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    point("folder/made")  # crash-test hooks (pyro_vae/faults.py): inert unless armed
    return path


def _fill_new_folder(path: Path, cfg: RunConfig, sources: dict[str, bytes]) -> RunConfig:
    """config.json, an empty metrics.jsonl and the story's files; the config as recorded."""
    # Checked under the lock: a writer that held it before us may have filled the folder.
    if (path / CHECKPOINT).exists():
        raise FileExistsError(f"{path} already holds a run; resume it with --resume {path}, "
                              f"or choose another --name")
    cfg = dataclasses.replace(cfg, story=_keep_story_files(cfg.story, sources, path))
    # This user ran these files: a later evaluate, sample or --resume imports them unasked.
    record_written({path / p.partition(":")[0]: d for p, d in
                    ((cfg.story.model, cfg.story.model_sha256),
                     (cfg.story.guide, cfg.story.guide_sha256)) if d})
    save_run_config(cfg, path / CONFIG)
    point("folder/config")
    (path / METRICS).write_text("")
    point("folder/filled")
    return cfg


def _check_map_site(site: str, model: Program, data: Data) -> None:
    names = [s.name for s in latent_sites(model, data.train.x[:2], slice_rows(data.train.fields(), 0, 2),
                                          who="the latent map")]
    if site and site not in names:
        raise ValueError(f"--map-site {site}: the story's latent sites are {names}")


def _story_sources(story: StoryConfig) -> dict[str, bytes]:
    """The bytes of the story and guide files, read once (what is trained is what is kept)."""
    files = {}
    if story.model and not is_named(story.model):
        files["model"] = parse_spec(story.model, "--model")[0]
    if ":" in story.guide:
        files["guide"] = parse_spec(story.guide, "--guide")[0]
    return {k: p.read_bytes() for k, p in files.items() if p.is_file()}


def _keep_story_files(story: StoryConfig, sources: dict[str, bytes], path: Path) -> StoryConfig:
    """Copy the story (and guide) files into the run folder; the config then names the copies
    and records where they came from and their SHA-256."""
    changes: dict = {}
    model_path = None
    if "model" in sources:
        model_path, model_name = parse_spec(story.model)
        (path / STORY_COPY).write_bytes(sources["model"])
        changes.update(model=f"{STORY_COPY}:{model_name}", model_source=str(model_path),
                       model_sha256=sha256_of(path / STORY_COPY))
    if "guide" in sources:
        guide_path, guide_name = parse_spec(story.guide)
        same = model_path is not None and guide_path.resolve() == model_path.resolve()
        copy = STORY_COPY if same else GUIDE_COPY
        if not same:
            (path / GUIDE_COPY).write_bytes(sources["guide"])
        changes.update(guide=f"{copy}:{guide_name}", guide_source=str(guide_path),
                       guide_sha256=sha256_of(path / copy))
    return dataclasses.replace(story, **changes)


# Settings a resumed run may change: they steer the rest of the fit, not what was fitted.
RESUMABLE = ("epochs", "lr", "clip_norm", "early_stopping", "device", "val_every")


def resume_run(path: Path, epochs: int | None = None, *, changes: dict | None = None,
               progress: bool = True, stop=None, trust_story: bool = False,
               loggers: Sequence[str] = (), mlflow_uri: str | None = None,
               checkpoint_every: float = CHECKPOINT_EVERY) -> TrainResult:
    """Continue the run in ``path`` from its checkpoint, optionally with a new total of
    ``epochs`` and new values of the :data:`RESUMABLE` training settings in ``changes``
    (applied and recorded in config.json), holding the folder's writer lock. A story file
    that ``train`` did not write for this user is refused unless ``trust_story``. The run's
    experiment trackers continue their runs; ``loggers`` adds more (and ``mlflow_uri`` says
    where a new mlflow logger writes), recorded in config.json. Checkpoints are written as
    :func:`train_run` writes them."""
    path = Path(path)
    if (path / CONFIG).is_file() and not (path / CHECKPOINT).exists():
        raise CheckpointError(_no_checkpoint(path))  # before the lock: the folder stays as it is
    world = distributed.current()
    distributed.note_folder(str(path))
    with distributed.on_writer(world, lambda: writer_lock(path, take=path.is_dir())):
        return _resume(path, epochs, changes, progress, stop, trust_story,
                       (tuple(loggers), mlflow_uri), checkpoint_every)


def _no_checkpoint(path: Path) -> str:
    """Why the run folder ``path`` (config.json, no checkpoint) cannot resume, and what to do."""
    done = len(epoch_lines(path / METRICS))
    if done:  # e.g. its records carried without its weights: training anew would lose them
        return (f"{path} holds the records of {done} epochs but no checkpoint (its weights were "
                f"not kept), so it cannot resume; it is left as it is: move it away to train "
                f"the run from epoch 0")
    return (f"{path} holds no checkpoint yet: the run stopped before its first epoch ended; "
            f"start it again with the same pyro-vae train command (--out {path.parent} --name "
            f"{path.name}), which fills the folder anew")


def _resume(path: Path, epochs: int | None, changes: dict | None, progress: bool,
            stop, trust: bool, track: tuple[tuple[str, ...], str | None],
            checkpoint_every: float) -> TrainResult:
    cfg = load_run_config(path / CONFIG, migrate_model_config)
    tracked = with_loggers(cfg.track, *track)
    check_loggers(tracked)
    changes = dict(changes or {})
    if epochs is not None:
        changes["epochs"] = epochs
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise ValueError(f"{refused[0]} cannot change when a run is resumed (it would fit a "
                         f"different model or data); settings that may change: "
                         f"{', '.join(RESUMABLE)}")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
    changed, cfg = bool(changes) or tracked != cfg.track, dataclasses.replace(cfg, track=tracked)
    check_train_config(cfg.train)
    said: list[str] = []
    cfg = dataclasses.replace(cfg, data=resolve_stream(cfg.data, said.append))
    data, model, guide = prepare(cfg, path, seed=cfg.train.seed, trust=trust)
    ckpt = _load_into(path, model, guide, data)
    if epochs is not None and epochs < ckpt.state.epoch:
        raise ValueError(f"--epochs {epochs} is fewer than the {ckpt.state.epoch} epochs {path} "
                         f"has already run; give the new total, at least {ckpt.state.epoch}")
    world = distributed.current()
    distributed.check_same_world(ckpt.state.world_size, world, str(path))
    # Scores of the checkpoint this fit replaces would sit beside the new one as if its own.
    if world.writer and (cfg.train.epochs > ckpt.state.epoch or ckpt.state.step):
        said.append(move_stale(path, ckpt.state.epoch) or "")
    _say(*filter(None, said))
    # Only a checkpoint that loaded may change the folder's files; rank 0 alone writes them.
    if changed and world.writer:
        save_run_config(cfg, path / CONFIG)
    # The checkpoint is the truth: metrics.jsonl is rewritten to match it.
    if world.writer:
        atomic_write(path / METRICS, metrics_matching(path / METRICS, ckpt.state.history).encode())
    return _run_fit(path, cfg, data, model, guide, ckpt, progress, stop, checkpoint_every)


def _load_into(path: Path, model: Program, guide: Program, data: Data, file: str = CHECKPOINT):
    """Create every parameter site (one run on two rows), then load the checkpoint into them."""
    materialize(model, guide, data)
    ckpt = load_checkpoint(path / file)
    load_modules(nn.ModuleDict({"model": model, "guide": guide}), ckpt.modules, str(path / file))
    return ckpt


def load_run(path: Path, device: str = "cpu", which: str = "last", *,
             trust_story: bool = False) -> LoadedRun:
    """A fitted run, ready to sample from, evaluate or diagnose (in eval mode, on ``device``):
    its last checkpoint, or with ``which="best"`` the parameters at its best validation ELBO
    (``best.safetensors``). A story (or guide) file in the folder is imported only if
    ``train`` wrote it for this user or ``trust_story`` says so (which is then recorded);
    else :class:`UntrustedStoryError`."""
    path = Path(path)
    if which not in WHICH:
        raise ValueError(f"checkpoint {which!r}: a run folder holds {' and '.join(WHICH)}")
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if which != "last" and not (path / WHICH[which]).is_file():
        raise FileNotFoundError(f"{path} holds no {WHICH[which]}: it is written when a "
                                f"validation ELBO improves; runs trained before it was kept lack one)")
    cfg = load_run_config(path / CONFIG, migrate_model_config)
    data, model, guide = prepare(cfg, path, trust=trust_story)
    ckpt = _load_into(path, model, guide, data, WHICH[which])
    dev = resolve_device(device)
    model.to(dev).eval()
    guide.to(dev).eval()
    return LoadedRun(path, cfg, model, guide, data.to(dev), dev, scored(which, ckpt))


def load_or_train(run: Path | None, cfg: RunConfig, out: Path, name: str) -> LoadedRun:
    """The run at ``run``; else the run in ``out/name``, fitting ``cfg`` there first if it
    holds none. Lets a script take ``--run`` or make its own model, and be rerun. (A story
    file in ``run`` must be trusted: see :func:`load_run`.)"""
    if run is None:
        run = Path(out) / name
        if not (run / CHECKPOINT).exists():
            train_run(cfg, out, name, progress=False)
    return load_run(run)
