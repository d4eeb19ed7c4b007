"""How often a fit writes its checkpoint: every epoch's line in metrics.jsonl at once, the
checkpoint (and ``best.safetensors``) at most every ``every`` seconds.

A checkpoint is written after a new run's first epoch (so that the folder can be resumed
early), then after the first epoch that ends ``every`` seconds or more after the last write,
at the end of the fit, when a signal stops it (SIGINT, SIGTERM: the fit returns), and when
it fails (a diverged fit, a lost rank, any exception): then the last finished epoch that
is not on disk yet is written. Only SIGKILL, a power cut or a lost machine can cost fitting
time: at most ``every`` seconds plus the epoch in progress.

``metrics.jsonl`` may then hold lines for epochs after the checkpoint on disk (up to
``every`` seconds of them, and a torn last line after SIGKILL); ``train --resume`` rewrites it
to the checkpoint's epochs (``metrics_matching`` in pyro_vae/runs/records.py) before the fit
goes on, so that every finished epoch is there once and agrees with the checkpoint. A
failure that cannot write the checkpoint (a full disk) cuts metrics.jsonl back to the
checkpoint's epochs itself.

``best.safetensors`` is written just before each checkpoint, from a copy taken at the epoch
that was best: a crash between the two leaves a best file one checkpoint ahead, which the
resumed fit (the same epochs again) rewrites at the same epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pyro_vae.files import appended
from pyro_vae.runs.checkpoint import flatten_state, frozen_state, write_flat
from pyro_vae.runs.records import BEST, is_new_best
from pyro_vae.state import EpochRecord, TrainState

CHECKPOINT_EVERY = 30.0
"""Seconds between checkpoints by default (``--checkpoint-every``)."""

Flat = tuple[dict[str, Tensor], dict[str, Any]]
"""A checkpoint's tensors and header (:func:`~pyro_vae.runs.checkpoint.flatten_state`)."""


class CheckpointWriter:
    """The epoch callback of a run folder's writer (rank 0), and what it does at the end.

    Args:
        folder: the run folder; ``checkpoint``, ``metrics`` name its files.
        meta: the checkpoint's metadata (the run's config).
        every: seconds between checkpoints; 0 writes one after every epoch.
        extra: ``extra(session, record)`` adds figures to an epoch's line (a classifier's
            accuracy, the latent sites' KL).
        then: is handed each line once a checkpoint on disk covers its epoch (the experiment
            trackers, which so never record an epoch that a resume would fit again).
        resumed: the folder's checkpoint is this fit's start (a resume): the clock starts
            now, rather than writing after the first epoch.
    """

    def __init__(self, folder: Path, checkpoint: str, metrics: str, meta: dict, every: float,
                 extra: Callable | None = None, then: Callable[[dict], None] | None = None, *,
                 resumed: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checkpoint, self.metrics = Path(folder) / checkpoint, Path(folder) / metrics
        self.best_path = Path(folder) / BEST
        self.meta, self.every, self.extra, self.then, self.clock = meta, every, extra, then, clock
        self.unsent: list[dict] = []
        """Lines written since the last checkpoint, not yet handed to ``then``."""
        self.last = clock() if resumed else -math.inf
        self.kept = self.metrics.stat().st_size if self.metrics.exists() else 0
        """Bytes of metrics.jsonl that the checkpoint on disk agrees with."""
        self.pending: tuple[Flat, int] | None = None
        """The last finished epoch, when it is not on disk yet, and the bytes of
        metrics.jsonl up to its line."""
        self.best: Flat | None = None
        """best.safetensors's next contents, when they are not on disk yet."""
        self.writes = 0

    def __call__(self, session, state: TrainState, record: EpochRecord) -> None:
        """After each epoch: its metrics line; a copy of a new best; the checkpoint if due."""
        line = dataclasses.asdict(record) | (self.extra(session, record) if self.extra else {})
        modules = session.modules()
        with appended(self.metrics, json.dumps(line) + "\n"):
            pass
        size = self.metrics.stat().st_size
        self.unsent.append(line)
        if is_new_best(state, record):
            self.best = frozen_state(modules, None, state)
        if self.clock() - self.last >= self.every:
            self.write(flatten_state(modules, session.optimizer, state), size)
        else:
            self.pending = (frozen_state(modules, session.optimizer, state), size)

    def write(self, flat: Flat, size: int) -> None:
        """best.safetensors if a new best waits, then the checkpoint ``flat``, which agrees
        with the first ``size`` bytes of metrics.jsonl."""
        if self.best is not None:
            write_flat(self.best_path, *self.best, self.meta)
            self.best = None
        write_flat(self.checkpoint, *flat, self.meta)
        self.pending, self.last, self.kept = None, self.clock(), size
        self.writes += 1
        sent, self.unsent = self.unsent, []
        for line in sent if self.then is not None else ():
            self.then(line)

    def finish(self, modules: nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainState) -> None:
        """The checkpoint of where the fit ended (finished, stopped early or by a signal)."""
        try:
            self.write(flatten_state(modules, optimizer, state), self.metrics.stat().st_size)
        except BaseException:
            self.cut_back()
            raise

    def fail(self) -> None:
        """The fit failed: write the last finished epoch if it is not on disk (best first),
        and cut metrics.jsonl back to the checkpoint on disk. An error here is not raised:
        the failure being handled is the one to report."""
        if self.pending is not None:
            with contextlib.suppress(Exception):
                self.write(*self.pending)
        self.cut_back()

    def cut_back(self) -> None:
        """Cut metrics.jsonl back to the lines the checkpoint on disk agrees with (which
        needs no space)."""
        with contextlib.suppress(OSError):
            if self.metrics.stat().st_size > self.kept:
                os.truncate(self.metrics, self.kept)
        self.unsent = []
