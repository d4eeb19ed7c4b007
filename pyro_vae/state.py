"""Where a fit stands: the records and state that fitting writes and checkpoints read.

A module of its own so that checkpoints, run folders and the fit loop share these
types without importing one another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor


class DivergenceError(RuntimeError):
    """The loss or gradient became non-finite; parameters were restored to the last good state."""


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch. ELBOs are in nats per image (higher is better)."""

    epoch: int
    train_elbo: float
    val_elbo: float | None
    seconds: float
    images_per_second: float
    beta: float
    lr: float | None = None
    """The learning rate of the epoch's steps (``None`` in records of runs written before
    pyro-vae recorded it)."""


@dataclass
class TrainState:
    """Where a fit stands. Checkpointed whole, so a resumed fit continues exactly.

    ``perm``, ``step``, ``loss_sum`` and ``count`` describe the epoch in
    progress; the RNG states are captured when the state is checkpointed.
    """

    epoch: int = 0
    step: int = 0
    perm: Tensor | None = None
    loss_sum: float = 0.0
    count: int = 0
    epoch_seconds: float = 0.0
    best_val: float = -math.inf
    bad_epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    perm_rng: Tensor | None = None
    torch_rng: Tensor | None = None
    cuda_rng: Tensor | None = None
    world_size: int = 1
    """Processes that fitted together (``torchrun``); the RNG states then hold one row per
    rank, and a resume needs the same number."""
