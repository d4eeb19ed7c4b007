"""Learning-rate schedules (``TrainConfig.lr_schedule``): the rate of each epoch's steps.

A schedule is a pure function of where the fit stands: the base rate ``lr``, the epoch
``e`` about to run (0-based), the ``E`` epochs planned (``TrainConfig.epochs``) and the
validation ELBOs of the epochs before it (``None`` for an epoch that was not validated).

- ``constant``: ``lr`` in every epoch (the default).
- ``burda`` (Burda et al. 2016): 3^i epochs at ``lr·10^(−i/7)`` for i = 0…7, 3,280 epochs in
  all. A fit of fewer epochs runs the schedule's first epochs; more are refused.
- ``step``: ``lr·gamma^⌊e / every⌋``.
- ``cosine``: ``floor + (lr − floor)·(1 + cos(π e / E)) / 2``, from ``lr`` in the first epoch
  towards ``floor``, which the epoch after the last would reach (PyTorch's
  ``CosineAnnealingLR`` with ``T_max = E``).
- ``plateau``: ``lr·factor^k``, where k counts the times the validation ELBO went
  ``patience`` validations without beating the best so far (the count restarts after each
  reduction; the best is kept).

The fit sets the rate on the optimizer's param groups at the start of every epoch, and of
the part of an epoch a resumed fit finishes, from its history of epochs. Nothing else is
stored: a resumed fit computes the same rates as an uninterrupted one, the plateau's best
value, bad epochs and factor included. A resume with a new ``--lr`` applies the rest of the
schedule to the new base rate; one with a new ``--epochs`` stretches ``cosine`` over the new
total from the epoch it resumes at (the others do not depend on the total).

This module imports only :mod:`pyro_vae.registry`, :mod:`pyro_vae.config` and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.registry import Registry

SCHEDULES: Registry = Registry("lr schedule")

# Burda et al. (2016), section 5: "for i = 0..7, 3^i passes at learning rate 0.001·10^(−i/7)".
BURDA_STAGES = 8
BURDA_EPOCHS = sum(3 ** i for i in range(BURDA_STAGES))  # 3,280

# (options, lr, epoch e, planned epochs E, validation ELBOs of epochs 0..e-1) -> the rate
Rate = Callable[[Any, float, int, int, Sequence["float | None"]], float]


@dataclass(frozen=True)
class Schedule:
    """One registered schedule."""

    rate: Rate
    """The learning rate of epoch ``e``."""
    check: Callable[[Any, TrainConfig], None] = lambda opts, cfg: None
    """Refuses options that contradict the rest of the fit's settings (a ValueError that
    names both); each option's own range is checked where its dataclass declares it."""
    epochs: int | None = None
    """The schedule's own length in epochs, where it has one (``burda``): the command line's
    default ``--epochs``, and the most a fit may plan."""


def _constant(opts: Any, lr: float, epoch: int, epochs: int, vals: Sequence) -> float:
    return lr


def _burda(opts: Any, lr: float, epoch: int, epochs: int, vals: Sequence) -> float:
    stage, end = 0, 1  # stage i covers epochs [(3^i - 1) / 2, (3^(i+1) - 1) / 2)
    while epoch >= end:
        stage += 1
        end += 3 ** stage
    return lr * 10 ** (-stage / 7)


def _check_burda(opts: Any, cfg: TrainConfig) -> None:
    if cfg.epochs > BURDA_EPOCHS:
        raise ValueError(f"--lr-schedule burda spans {BURDA_EPOCHS:,} epochs (3^i at "
                         f"lr·10^(-i/7) for i = 0..7), so --epochs {cfg.epochs} has no rate "
                         f"after epoch {BURDA_EPOCHS:,}; give at most {BURDA_EPOCHS} (the "
                         f"default with burda), or fewer to run its first epochs")


def _positive_int(value: int, what: str) -> None:
    if not value >= 1:
        raise ValueError(f"{what} must be at least 1, got {value}")


def _fraction(value: float, what: str) -> None:
    """``value`` in (0, 1): a factor that lowers the rate."""
    if not 0 < value < 1:
        raise ValueError(f"{what} must lie strictly between 0 and 1 (a factor that lowers the "
                         f"rate), got {value}")


@dataclass(frozen=True)
class StepOptions:
    """Settings of the ``step`` schedule."""

    every: int = field(default=100, metadata={
        "help": "epochs between reductions of the rate", "parse": "int"})
    gamma: float = field(default=0.5, metadata={
        "help": "factor the rate is multiplied by at each reduction", "parse": "float"})

    def __post_init__(self) -> None:
        _positive_int(self.every, "the step schedule's every (--lr-schedule-step-every)")
        _fraction(self.gamma, "the step schedule's gamma (--lr-schedule-step-gamma)")


def _step(opts: StepOptions, lr: float, epoch: int, epochs: int, vals: Sequence) -> float:
    return lr * opts.gamma ** (epoch // opts.every)


@dataclass(frozen=True)
class CosineOptions:
    """Settings of the ``cosine`` schedule."""

    floor: float = field(default=0.0, metadata={
        "help": "learning rate the curve falls towards over the planned epochs (below --lr)",
        "parse": "float"})

    def __post_init__(self) -> None:
        if not (0 <= self.floor < math.inf):
            raise ValueError(f"the cosine schedule's floor (--lr-schedule-cosine-floor) must "
                             f"be zero or a positive number, got {self.floor}")


def _cosine(opts: CosineOptions, lr: float, epoch: int, epochs: int, vals: Sequence) -> float:
    return opts.floor + (lr - opts.floor) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def _check_cosine(opts: CosineOptions, cfg: TrainConfig) -> None:
    if not opts.floor < cfg.lr:
        raise ValueError(f"the cosine schedule's floor (--lr-schedule-cosine-floor "
                         f"{opts.floor:g}) must lie below the base rate (--lr {cfg.lr:g}), "
                         f"from which it falls")


@dataclass(frozen=True)
class PlateauOptions:
    """Settings of the ``plateau`` schedule."""

    patience: int = field(default=10, metadata={
        "help": "validations without a better validation ELBO before the rate is lowered",
        "parse": "int"})
    factor: float = field(default=0.5, metadata={
        "help": "factor the rate is multiplied by at each reduction", "parse": "float"})

    def __post_init__(self) -> None:
        _positive_int(self.patience, "the plateau schedule's patience "
                                     "(--lr-schedule-plateau-patience)")
        _fraction(self.factor, "the plateau schedule's factor (--lr-schedule-plateau-factor)")


def _plateau(opts: PlateauOptions, lr: float, epoch: int, epochs: int,
             vals: Sequence[float | None]) -> float:
    """Replays the validation ELBOs so far: the counters need no state of their own."""
    best, bad, factor = -math.inf, 0, 1.0
    for value in vals:
        if value is None:  # an epoch without validation (val_every > 1) counts for nothing
            continue
        if value > best:
            best, bad = value, 0
            continue
        bad += 1
        if bad >= opts.patience:
            factor, bad = factor * opts.factor, 0
    return lr * factor


def _check_plateau(opts: PlateauOptions, cfg: TrainConfig) -> None:
    if cfg.early_stopping is not None and cfg.early_stopping <= opts.patience:
        raise ValueError(f"--early-stopping {cfg.early_stopping} would end the fit before the "
                         f"plateau schedule ever lowers the rate (it waits "
                         f"--lr-schedule-plateau-patience {opts.patience} validations without a "
                         f"better validation ELBO); give --early-stopping above the patience")


SCHEDULES.register("constant")(Schedule(_constant))
SCHEDULES.register("burda")(Schedule(_burda, _check_burda, epochs=BURDA_EPOCHS))
SCHEDULES.register("step", options=StepOptions)(Schedule(_step))
SCHEDULES.register("cosine", options=CosineOptions)(Schedule(_cosine, _check_cosine))
SCHEDULES.register("plateau", options=PlateauOptions)(Schedule(_plateau, _check_plateau))


def schedule_options(cfg: TrainConfig) -> Any:
    """The options of ``cfg``'s schedule: its defaults and what ``cfg.options`` gives for it
    (unknown keys, wrong types and values out of range refused)."""
    name = cfg.lr_schedule
    return SCHEDULES.options(name, cfg.options.get("lr_schedule", {}).get(name))


def check_schedule(cfg: TrainConfig) -> None:
    """Refuse an unknown schedule, bad options, and options that contradict the fit's
    other settings, each in one sentence."""
    for name in cfg.options.get("lr_schedule", {}):
        SCHEDULES.lookup(name)
    SCHEDULES.lookup(cfg.lr_schedule).check(schedule_options(cfg), cfg)


def learning_rate(cfg: TrainConfig, epoch: int, val_elbos: Sequence[float | None]) -> float:
    """The rate of epoch ``epoch`` (0-based) of a fit whose epochs before it had the
    validation ELBOs ``val_elbos`` (``None`` where not validated)."""
    schedule = SCHEDULES.lookup(cfg.lr_schedule)
    return schedule.rate(schedule_options(cfg), cfg.lr, epoch, cfg.epochs, val_elbos)


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """Every param group steps at ``rate`` from now on (the compiled step reads it too)."""
    for group in optimizer.param_groups:
        group["lr"] = rate
