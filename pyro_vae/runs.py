"""Run folders: a fit's config, metrics, checkpoint and figures in ``runs/<name>/``.

.. code-block:: text

    runs/<name>/config.json              everything needed to rebuild the model
    runs/<name>/metrics.jsonl            one line per epoch
    runs/<name>/checkpoint.safetensors   parameters, optimizer and fit state
    runs/<name>/*.png                    figures
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pyro_vae import figures
from pyro_vae.build import build_vae
from pyro_vae.checkpoint import load_checkpoint, load_modules, save_checkpoint
from pyro_vae.config import RunConfig, load_run_config, save_run_config
from pyro_vae.data import Data, load_data
from pyro_vae.fit import (EpochRecord, FitResult, FitSession, TrainState, check_train_config, fit,
                          resolve_device)
from pyro_vae.models import LIKELIHOODS
from pyro_vae.objectives import build_objective
from pyro_vae.validation import check_image_shape

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.safetensors"


@dataclass(frozen=True)
class LoadedRun:
    """A run folder brought back: its config, fitted model and guide, and data."""

    path: Path
    config: RunConfig
    model: nn.Module
    guide: nn.Module
    data: Data
    device: torch.device


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_run` did: the fit, and the figures it wrote."""

    path: Path
    fit: FitResult
    figures: list[Path]


def default_run_name(cfg: RunConfig) -> str:
    data = Path(cfg.data.name).stem
    m = cfg.model
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{data}-{m.prior}-{m.guide}-z{m.latent_dim}"


def is_binary_likelihood(cfg: RunConfig) -> bool:
    """Whether the configured likelihood scores x in {0, 1} only."""
    likelihood = LIKELIHOODS.lookup(cfg.model.likelihood)(cfg.model, 1)
    return bool(getattr(likelihood, "binary", False))


def load_run_data(cfg: RunConfig) -> Data:
    """The run's images, checked before any work (same image size as when the run started)."""
    data = load_data(cfg.data, is_binary_likelihood(cfg))
    if cfg.image_shape:
        check_image_shape(data.image_shape, cfg.image_shape, data.source,
                          "the run being resumed (config.json image_shape)")
    return data


def checkpoint_callback(path: Path, cfg: RunConfig) -> Callable:
    """After each epoch: append the epoch to metrics.jsonl and rewrite the checkpoint."""

    def write(session: FitSession, state: TrainState, record: EpochRecord) -> None:
        with open(path / METRICS, "a") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")
        session.capture_rng(state)
        save_state(path, session.modules(), session.optimizer, state, cfg)

    return write


def save_state(path: Path, modules: nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainState, cfg: RunConfig) -> None:
    save_checkpoint(path / CHECKPOINT, modules, optimizer, state, {"config": dataclasses.asdict(cfg)})


def write_figures(path: Path, model: nn.Module, guide: nn.Module, data: Data,
                  history: list[EpochRecord], seed: int) -> list[Path]:
    """The run's PNGs: ELBO curves, reconstructions, prior samples, latent map, manifold (2-D z)."""
    x_test = data.eval_split("test", seed=seed)
    shape = data.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = [figures.elbo_curves(history, path / "elbo_curves.png"),
               figures.reconstructions(model, guide, x_test, shape, path / "reconstructions.png"),
               figures.prior_samples(model, shape, path / "prior_samples.png"),
               figures.latent_map(guide, x_test[:2000], _labels(data.test, 2000),
                                  path / "latent_map.png")]
        if guide.z_dist(x_test[:1]).event_shape[-1] == 2:
            out.append(figures.manifold(model, shape, path / "manifold.png"))
    return out


def _labels(split, n: int):
    return None if split.labels is None else split.labels[:n]


def write_summary(path: Path, result: FitResult) -> None:
    """``summary.json``: the figures a person looks for first."""
    last = result.history[-1] if result.history else None
    summary = {
        "epochs": len(result.history),
        "final_train_elbo": last.train_elbo if last else None,
        "final_val_elbo": last.val_elbo if last else None,
        "best_val_elbo": result.best_val_elbo if result.history else None,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "seconds": result.seconds,
        "mean_epoch_seconds": (sum(r.seconds for r in result.history) / len(result.history)
                               if result.history else None),
    }
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _run_fit(path: Path, cfg: RunConfig, data: Data, model: nn.Module, guide: nn.Module,
             checkpoint=None, progress: bool = True, stop=None) -> TrainResult:
    result = fit(model, guide, data, cfg.train,
                 state=checkpoint.state if checkpoint else None,
                 optimizer_state=checkpoint.optimizer if checkpoint else None,
                 callbacks=[checkpoint_callback(path, cfg)], stop=stop, progress=progress)
    save_state(path, nn.ModuleDict({"model": model, "guide": guide}), result.optimizer,
               result.state, cfg)
    write_summary(path, result)
    pictures: list[Path] = []
    if not result.interrupted:
        pictures = write_figures(path, model, guide, data.to(next(model.parameters()).device),
                                 result.history, cfg.train.seed)
    return TrainResult(path, result, pictures)


def train_run(cfg: RunConfig, out: Path = Path("runs"), name: str | None = None, *,
              progress: bool = True, stop=None) -> TrainResult:
    """Load the data, build the model, fit it, and fill a new run folder ``out/name``."""
    # Every setting is checked before the folder exists, so a mistake leaves nothing behind.
    check_train_config(cfg.train)
    resolve_device(cfg.train.device)
    build_objective(cfg.train)
    data = load_run_data(cfg)
    cfg = dataclasses.replace(cfg, image_shape=tuple(data.image_shape))
    path = Path(out) / (name or default_run_name(cfg))
    if (path / CHECKPOINT).exists():
        raise FileExistsError(f"{path} already holds a run; resume it with --resume {path}, "
                              f"or choose another --name")
    model, guide = build_vae(cfg.model, data.data_dim, seed=cfg.train.seed)
    path.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, path / CONFIG)
    (path / METRICS).write_text("")
    return _run_fit(path, cfg, data, model, guide, progress=progress, stop=stop)


def resume_run(path: Path, epochs: int | None = None, *, progress: bool = True,
               stop=None) -> TrainResult:
    """Continue the run in ``path`` from its checkpoint (optionally to more ``epochs``)."""
    path = Path(path)
    cfg = load_run_config(path / CONFIG)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    check_train_config(cfg.train)
    data = load_run_data(cfg)
    model, guide = build_vae(cfg.model, data.data_dim, seed=cfg.train.seed)
    ckpt = load_checkpoint(path / CHECKPOINT)
    load_modules(nn.ModuleDict({"model": model, "guide": guide}), ckpt.modules, str(path / CHECKPOINT))
    if epochs is not None and epochs < ckpt.state.epoch:
        raise ValueError(f"--epochs {epochs} is fewer than the {ckpt.state.epoch} epochs {path} "
                         f"has already run; give the new total, at least {ckpt.state.epoch}")
    # Only a checkpoint that loaded may change the folder's files.
    if epochs is not None:
        save_run_config(cfg, path / CONFIG)
    # The checkpoint is the truth: metrics.jsonl is rewritten to match it.
    (path / METRICS).write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n"
                                        for r in ckpt.state.history))
    return _run_fit(path, cfg, data, model, guide, ckpt, progress, stop)


def load_run(path: Path, device: str = "cpu") -> LoadedRun:
    """A fitted run, ready to sample from, evaluate or diagnose (in eval mode, on ``device``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    cfg = load_run_config(path / CONFIG)
    data = load_run_data(cfg)
    model, guide = build_vae(cfg.model, data.data_dim)
    ckpt = load_checkpoint(path / CHECKPOINT)
    load_modules(nn.ModuleDict({"model": model, "guide": guide}), ckpt.modules, str(path / CHECKPOINT))
    dev = resolve_device(device)
    model.to(dev).eval()
    guide.to(dev).eval()
    return LoadedRun(path, cfg, model, guide, data.to(dev), dev)


def load_or_train(run: Path | None, cfg: RunConfig, out: Path, name: str) -> LoadedRun:
    """The run at ``run``; else the run in ``out/name``, fitting ``cfg`` there first if it
    holds none. Lets a script take ``--run`` or make its own model, and be rerun."""
    if run is None:
        run = Path(out) / name
        if not (run / CHECKPOINT).exists():
            train_run(cfg, out, name, progress=False)
    return load_run(run)
