"""Experiment tracking: each epoch's line of metrics.jsonl, once it and the checkpoint are
written, sent on to the run's loggers (:mod:`~pyro_vae.runs.loggers`), with the run's figures
at its end and its config as hyperparameters when it starts (docs/tracking.md).

.. code-block:: text

    runs/<name>/tracking.json    per logger: the last epoch it holds, the step of the figures
                                 it holds, and what continues its run (MLflow's run id)

A resumed fit continues each logger's run: it first sends the epochs of metrics.jsonl that
the logger lacks (all of them for a logger added at the resume), then the new ones, so every
epoch reaches every logger once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from pyro_vae.config import RunConfig, TrackConfig, run_config_to_dict
from pyro_vae.files import atomic_write
from pyro_vae.runs.compare import flatten
from pyro_vae.runs.loggers import LOGGERS, Logger, is_local

TRACKING = "tracking.json"
EXTRA = 'pip install -e ".[track]"'


class MissingExtraError(ValueError):
    """A logger's package is not installed (one line naming the extra that adds it)."""


def check_loggers(track: TrackConfig) -> None:
    """Before a fit: every logger is registered and its package imports, and
    ``mlflow_uri`` is given only to the mlflow logger.

    Raises:
        UnknownNameError: a name no logger has (the message lists them).
        MissingExtraError: a logger's package is missing.
        ValueError: ``mlflow_uri`` without the mlflow logger.
    """
    for name in track.loggers:
        module = LOGGERS.lookup(name).requires
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            why = (str(err).splitlines() or [type(err).__name__])[0]
            raise MissingExtraError(f"--log {name} needs a package that is not installed "
                                    f"(import {module}: {why}); install the tracking extra: "
                                    f"{EXTRA}") from None
    if track.mlflow_uri and "mlflow" not in track.loggers:
        raise ValueError(f"--mlflow-uri {track.mlflow_uri} is for --log mlflow, which this "
                         f"run does not use")


def with_loggers(track: TrackConfig, loggers: Sequence[str] = (),
                 mlflow_uri: str | None = None) -> TrackConfig:
    """``track`` with ``loggers`` added (each once, in order) and ``mlflow_uri`` set. A run
    already logging to MLflow keeps its URI: its run lives there.

    Raises:
        ValueError: a different ``mlflow_uri`` for a run that has one.
    """
    names = tuple(dict.fromkeys((*track.loggers, *loggers)))
    uri = _as_uri(track.mlflow_uri)
    if mlflow_uri is not None:
        if "mlflow" in track.loggers and _as_uri(mlflow_uri) != uri:
            now = track.mlflow_uri or "the run folder's mlruns/"
            raise ValueError(f"--mlflow-uri {mlflow_uri}: the run's MLflow run is at {now}, "
                             f"and a resumed fit continues it there")
        uri = _as_uri(mlflow_uri)
    return TrackConfig(loggers=names, mlflow_uri=uri)


def _as_uri(uri: str) -> str:
    """A folder given as an MLflow tracking URI, as an absolute ``file:`` URI (a resumed run
    may start elsewhere); any other URI as it is."""
    return Path(uri).resolve().as_uri() if uri and is_local(uri) and "://" not in uri else uri


def scalars(line: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl line, by their keys there, without ``epoch`` (the
    step) and without what the epoch left blank (``val_elbo`` between validations)."""
    return {k: float(v) for k, v in line.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """The run's open loggers, each with the epochs it holds (what ``tracking.json`` says)."""

    def __init__(self, folder: Path, loggers: dict[str, Logger], held: dict[str, dict]) -> None:
        self.folder, self.loggers, self.held = Path(folder), loggers, held
        self.status = "failed"  # until finish() says how the fit ended

    def epoch(self, line: dict[str, Any]) -> None:
        """After an epoch's line and checkpoint are written: the line to every logger that
        lacks its epoch, then ``tracking.json``."""
        self.send(line)
        self.save()

    def send(self, line: dict[str, Any]) -> None:
        """One metrics.jsonl line to every logger that lacks its epoch."""
        epoch, values = int(line["epoch"]), scalars(line)
        for name, logger in self.loggers.items():
            if epoch > self.held[name]["epoch"]:
                logger.scalars(epoch, values)
                self.held[name]["epoch"] = epoch

    def finish(self, figures: Sequence[Path], epoch: int, interrupted: bool) -> None:
        """The run's figures at step ``epoch`` (to each logger that has not had them there),
        and how the fit ended; only the PNGs are images (explorer.html is a page)."""
        figures = [f for f in figures if Path(f).suffix == ".png"]
        for name, logger in self.loggers.items():
            if figures and self.held[name].get("figures") != epoch:
                logger.images(epoch, figures)
                self.held[name]["figures"] = epoch
        self.status = "interrupted" if interrupted else "finished"
        self.save()

    def save(self) -> None:
        if not self.loggers:  # a run without trackers has no tracking.json
            return
        entries = {n: {**self.held[n], **lg.state()} for n, lg in self.loggers.items()}
        atomic_write(self.folder / TRACKING, (json.dumps(entries, indent=2) + "\n").encode())

    def close(self) -> None:
        for logger in self.loggers.values():
            logger.close(self.status)


def read_tracking(folder: Path) -> dict[str, dict]:
    """``tracking.json`` of a run folder; empty when it has none."""
    path = Path(folder) / TRACKING
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ValueError(f"{path}: expected a JSON object of one object per logger")
    return entries


def _lines(path: Path) -> list[dict]:
    """metrics.jsonl's epochs, as the fit wrote them (a resume has matched it to the checkpoint)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def open_tracker(folder: Path, cfg: RunConfig, metrics: Path) -> Tracker:
    """The loggers of ``cfg.track`` opened on run folder ``folder``: a new one is given the
    config; each is sent the lines of ``metrics`` (metrics.jsonl) for the epochs it lacks."""
    folder = Path(folder)
    if not cfg.track.loggers:
        return Tracker(folder, {}, {})
    recorded, lines = read_tracking(folder), _lines(metrics)
    done = max((int(line["epoch"]) for line in lines), default=0)
    settings = flatten(run_config_to_dict(cfg))
    loggers: dict[str, Logger] = {}
    held: dict[str, dict] = {}
    tracker = Tracker(folder, loggers, held)
    try:
        for name in cfg.track.loggers:
            entry = recorded.get(name)
            # Never more than the checkpoint: a fit resumed from an older one rewrites the rest.
            held[name] = {"epoch": min(int(entry["epoch"]), done) if entry else 0}
            # Figures at a later step are gone with it (TensorBoard purges them), or replaced.
            if entry and entry.get("figures", done + 1) <= held[name]["epoch"]:
                held[name]["figures"] = entry["figures"]
            loggers[name] = LOGGERS.lookup(name)(folder, cfg.track, entry, held[name]["epoch"])
            if entry is None:
                loggers[name].hyperparameters(settings)
        for line in lines:  # what a logger lacks, e.g. every epoch for one added now
            tracker.send(line)
        tracker.save()
    except BaseException:
        tracker.close()
        raise
    return tracker


@contextlib.contextmanager
def tracking(folder: Path, cfg: RunConfig, metrics: Path) -> Iterator[Tracker]:
    """:func:`open_tracker`, closed at the end (a fit that raised is marked failed)."""
    tracker = open_tracker(folder, cfg, metrics)
    try:
        yield tracker
    finally:
        tracker.close()
