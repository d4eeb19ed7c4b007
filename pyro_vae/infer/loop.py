"""Stochastic variational inference for a model/guide pair on images held as tensors.

The loss is Pyro's own ELBO estimator (``differentiable_loss``); parameters
live in the model and guide modules, not in Pyro's global parameter store, and
one ``torch.optim.Adam`` steps them all. Every fit runs inside its own
parameter-store scope, so fits never share state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae.config import TrainConfig
from pyro_vae.data import Data
from pyro_vae.faults import point
from pyro_vae.infer.fused import FusedStep, auto_wait, unfusable
from pyro_vae.infer.objectives import MAX_PLATE_NESTING, Auto, build_objective
from pyro_vae.infer.precision import PRECISIONS
from pyro_vae.infer.schedules import learning_rate, set_learning_rate
from pyro_vae.infer.session import FitSession, start_session
from pyro_vae.programs import Batch, Program, cuda_devices
from pyro_vae.state import DivergenceError, EpochRecord, TrainState
from pyro_vae.traces import index_rows, is_enumerated, slice_rows, trace_program


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns; ``model`` and ``guide`` hold the fitted parameters."""

    model: Program
    guide: Program
    history: list[EpochRecord]
    best_val_elbo: float
    stopped_early: bool
    interrupted: bool
    seconds: float
    state: TrainState
    optimizer: torch.optim.Optimizer
    compiled_step: dict | None = None
    """With a whole-step program (``elbo-compile``, ``iwae-compile``, a long ``elbo-auto``
    fit): the steps it took and, if it fell back, why (``None`` otherwise)."""


EpochCallback = Callable[["FitSession", TrainState, EpochRecord], None]


def kl_weight(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """β, ramped linearly from 0 over ``kl_warmup`` epochs (per step, for smoothness)."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    steps = max(steps_per_epoch, 1)
    # poutine.scale refuses a weight of 0, so the ramp starts at its first increment.
    progress = max(epoch + step / steps, 1 / steps) / cfg.kl_warmup
    return cfg.beta * min(1.0, progress)


@torch.no_grad()
def mean_elbo(model: Callable, guide: Callable, x: Tensor, batch: Batch | None = None,
              batch_size: int = 2048) -> float:
    """Single-sample ELBO per image, averaged over ``x`` ``[N, D]`` (nats); ``batch`` holds
    the per-row extras, sliced with x. Sites marked for enumeration (in story or guide) are
    summed out by ``TraceEnum_ELBO``, as ``--objective enum`` trains them: ``Trace_ELBO``
    would draw a story's enumerated site from its prior and report a lower number."""
    if _enumerates(model, guide, x, batch):
        # TraceEnum_ELBO's differentiable_loss refuses a loss without gradients: its loss() is the same sum.
        loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING).loss
    else:
        loss = pyro.infer.Trace_ELBO(max_plate_nesting=1).differentiable_loss
    total = 0.0
    for lo in range(0, len(x), batch_size):
        total += float(loss(model, guide, x[lo:lo + batch_size],
                            **slice_rows(batch or {}, lo, lo + batch_size)))
    return -total / len(x)


def _enumerates(model: Callable, guide: Callable, x: Tensor, batch: Batch | None) -> bool:
    """Whether guide or model, traced on two rows of ``x``, marks a site for enumeration.
    The caller's random state is left as it was (the draws here are thrown away)."""
    rows = slice_rows(batch or {}, 0, 2)
    with torch.random.fork_rng(devices=cuda_devices(x)):
        return any(is_enumerated(site) for program in (guide, model)
                   for site in trace_program(program, x[:2], rows).nodes.values())


def _snapshot(session: FitSession) -> dict:
    """A detached copy of parameters and optimizer state, to roll back to."""
    clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
    opt = session.optimizer.state_dict()
    opt_state = {i: clone(s) for i, s in opt["state"].items()}
    return {"modules": clone(session.modules().state_dict()),
            "optimizer": {"state": opt_state, "param_groups": opt["param_groups"]}}


def _restore(session: FitSession, snap: dict) -> None:
    session.modules().load_state_dict(snap["modules"])
    session.optimizer.load_state_dict(snap["optimizer"])


def _step(session: FitSession, objective, rows: Tensor, beta: float,
          where: Callable[[], str]) -> float:
    """One SVI step on the training rows ``rows`` ``[B]``; returns the batch loss (sum over
    images). ``where()`` says which step this is, for an error message."""
    if session.fused is not None:
        value = session.fused(rows, beta, where)
        if value is not None:
            return value
        objective = session.fused.rest
    return _eager_step(session, objective, rows, beta, where)


def _eager_step(session: FitSession, objective, rows: Tensor, beta: float,
                where: Callable[[], str]) -> float:
    """:func:`_step` as separate kernels: the batch, the loss, its backward, Adam."""
    x, batch = session.data.train_batch(rows)
    precision = PRECISIONS[session.config.precision]
    with precision.forward(session.device):
        if session.ddp is None:
            loss = objective.differentiable_loss(session.model, session.guide, x, beta=beta,
                                                 batch=batch)
        else:
            loss = session.ddp(x, beta, batch)
    # The one host sync per step (the scalar loss; summed over ranks, so that all of them
    # agree); before backward it stops a non-finite loss from reaching the optimizer.
    value = distributed.all_sum([float(loss.detach())], session.world)[0]
    if not math.isfinite(value):
        raise DivergenceError(f"the loss became {value} at {where()}")
    session.optimizer.zero_grad(set_to_none=True)
    # DDP averages gradients over ranks; times the number of ranks, they are the gradient
    # of the summed loss, as one process computes it on the whole batch.
    with precision.backward(session.device):
        (loss if session.ddp is None else loss * session.world.size).backward()
    clip = session.config.clip_norm
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(session.parameters(), clip)
        if not torch.isfinite(norm):
            raise DivergenceError(f"the gradient norm became {float(norm)} at {where()}")
    session.optimizer.step()
    return value


def _run_epoch(session: FitSession, state: TrainState, objective, bar,
               stop: Callable[[], bool] | None) -> bool:
    """Steps through the epoch in progress; False when ``stop()`` asked to halt early."""
    cfg, steps = session.config, session.steps_per_epoch
    batches = session.batches
    if state.perm is None:
        state.perm = batches.permutation(session.perm_rng, session.device)
    # A streamed split (pyro_vae/data/streams.py) reads this rank's batches of the epoch ahead.
    plan = getattr(session.data.train, "plan", None)
    if plan is not None:
        plan(state.perm, cfg.batch_size, session.world, state.step)
    start = time.perf_counter()
    try:
        while state.step < steps:
            # Every rank stops at the same step, whichever of them was signalled.
            if stop is not None and distributed.any_rank(stop(), session.world):
                return False
            point("fit/step")  # a crash test's hook (pyro_vae/faults.py): inert unless armed
            index = batches.rows(state.perm, state.step)
            beta = kl_weight(cfg, state.epoch, state.step, steps)
            where = lambda: f"epoch {state.epoch + 1}, step {state.step + 1} of {steps}"  # noqa: E731
            rows = distributed.shard(index, session.world)
            loss = _step(session, objective, rows, beta, where)
            state.loss_sum += loss
            state.count += len(index)
            state.step += 1
            bar.update(1)
        return True
    finally:
        state.epoch_seconds += time.perf_counter() - start


def _check_parameters(session: FitSession, state: TrainState) -> None:
    """Once per epoch (one sync): a non-finite gradient in the epoch's last step leaves
    non-finite parameters that no loss has seen yet; they must not become the good state."""
    if not bool(torch.stack([p.detach().isfinite().all() for p in session.parameters()]).all()):
        steps = session.steps_per_epoch
        raise DivergenceError(f"the gradient became non-finite at epoch {state.epoch + 1}, "
                              f"step {steps} of {steps} (the parameters are NaN or inf)")


def _finish_epoch(session: FitSession, state: TrainState, val_x: Tensor) -> EpochRecord:
    cfg = session.config
    last = state.epoch + 1 == cfg.epochs
    val = None
    if (state.epoch + 1) % cfg.val_every == 0 or last:
        val = _validation_elbo(session, val_x)
    steps = session.steps_per_epoch
    record = EpochRecord(state.epoch + 1, -state.loss_sum / state.count, val, state.epoch_seconds,
                         state.count / max(state.epoch_seconds, 1e-9),
                         kl_weight(cfg, state.epoch, steps, steps),
                         session.optimizer.param_groups[0]["lr"])
    state.history.append(record)
    state.epoch, state.step, state.perm = state.epoch + 1, 0, None
    state.loss_sum, state.count, state.epoch_seconds = 0.0, 0, 0.0
    return record


def _validation_elbo(session: FitSession, val_x: Tensor) -> float:
    """The mean ELBO per validation image ``val_x`` ``[N, D]``; with several ranks each
    scores its share of the rows and the sums are added up."""
    if not session.world.parallel:
        return mean_elbo(session.model, session.guide, val_x, session.data.val.fields())
    rows = distributed.shard(torch.arange(len(val_x), device=val_x.device), session.world)
    local = mean_elbo(session.model, session.guide, val_x[rows],
                      index_rows(session.data.val.fields(), rows))
    return distributed.all_sum([local * len(rows)], session.world)[0] / len(val_x)


def _track_best(state: TrainState, record: EpochRecord) -> bool:
    """Update the early-stopping counters; True when this epoch is the best so far."""
    if record.val_elbo is None:
        return False
    if record.val_elbo > state.best_val:
        state.best_val, state.bad_epochs = record.val_elbo, 0
        return True
    state.bad_epochs += 1
    return False


def fit(model: Callable, guide: Callable, data: Data, config: TrainConfig = TrainConfig(), *,
        state: TrainState | None = None, optimizer_state: dict | None = None,
        callbacks: Iterable[EpochCallback] = (), stop: Callable[[], bool] | None = None,
        progress: bool = True) -> FitResult:
    """Fit ``model(x, **batch)`` and ``guide(x, **batch)`` to ``data`` by stochastic VI.

    Args:
        model, guide: Pyro programs (functions or ``nn.Module`` s) following the story
            contract: they score a batch ``x`` of shape ``[B, D]`` inside
            ``pyro.plate("data", B)``, and take the per-row extras they name (``y``).
            Both are wrapped as :class:`~pyro_vae.programs.Program` s, which own every
            ``pyro.param`` and ``pyro.module`` parameter; the result holds them.
        data: the images; batches come from ``data.train``, the validation
            ELBO from ``data.val``.
        config: epochs, batch size, learning rate, objective, seed, device...
        state, optimizer_state: where a checkpointed fit stood, to resume it.
        callbacks: called after every epoch with ``(session, state, record)``.
        stop: polled before every step; when it returns True the fit returns
            at that step boundary with ``interrupted=True``.
        progress: show a progress bar with the ELBO and images per second.

    Raises:
        DivergenceError: the loss or gradient became non-finite. The
            parameters are first restored to the end of the last good epoch.
    """
    session, state = start_session(model, guide, data, config, state, optimizer_state)
    objective = build_objective(config)
    if session.world.parallel:
        rows = torch.arange(2, device=session.device)
        session.ddp = distributed.data_parallel(session.model, session.guide, objective,
                                                session.device, lambda: session.data.train_batch(rows))
    val_x = session.data.eval_split("val", seed=config.seed)
    steps = session.steps_per_epoch
    started, stopped_early, interrupted = time.perf_counter(), False, False
    good = best = (_snapshot(session), "their values when this fit started")
    bar = tqdm(total=config.epochs * steps, initial=state.epoch * steps + state.step,
               disable=not (progress and session.world.writer) or None, unit="step",
               dynamic_ncols=True)
    session.fused = _fused_step(session, state, objective, bar)
    attach = PRECISIONS[config.precision].attach(session.modules(), session.device)
    with pyro.get_param_store().scope(), pyro.validation_enabled(False), bar, attach:
        while state.epoch < config.epochs:
            # From the history alone, so that a resumed fit steps at the same rates.
            set_learning_rate(session.optimizer, learning_rate(
                config, state.epoch, [r.val_elbo for r in state.history]))
            if not _guarded_epoch(session, state, objective, bar, stop, good):
                interrupted = True
                break
            record = _finish_epoch(session, state, val_x)
            good = (_snapshot(session), f"the end of epoch {state.epoch}")
            if _track_best(state, record) and config.early_stopping:
                best = good
            bar.set_postfix(elbo=f"{record.train_elbo:.2f}", val=_fmt(record.val_elbo),
                            lr=f"{record.lr:.3g}", img_s=f"{record.images_per_second:.0f}")
            session.capture_rng(state)  # what a checkpoint written by a callback resumes from
            for callback in callbacks:
                callback(session, state, record)
            if config.early_stopping and state.bad_epochs >= config.early_stopping:
                stopped_early = True
                _restore(session, best[0])
                break
    session.capture_rng(state)
    fused = session.fused
    return FitResult(session.model, session.guide, state.history, state.best_val, stopped_early, interrupted,
                     time.perf_counter() - started, state, session.optimizer,
                     None if fused is None else {"steps": fused.taken, "fallback": fused.fallback})


def _fused_step(session: FitSession, state: TrainState, objective, bar) -> FusedStep | None:
    """The whole step as one compiled program where it can be (``elbo-compile``, and
    ``elbo-auto`` from the step where it pays); the progress bar says when it is compiling."""
    wait: int | None = 0
    if isinstance(objective, Auto):
        steps = session.steps_per_epoch
        wait = auto_wait(state.epoch * steps + state.step, session.config.epochs * steps)
    if wait is None or unfusable(session, objective) is not None:
        return None
    return FusedStep(session, objective, lambda rows, beta, where, loss:
                     _eager_step(session, loss, rows, beta, where), bar.set_description_str, wait)


def _guarded_epoch(session: FitSession, state: TrainState, objective, bar,
                   stop: Callable[[], bool] | None, good: tuple[dict, str]) -> bool:
    """:func:`_run_epoch`; on divergence, roll back to ``good`` and say what to try."""
    try:
        finished = _run_epoch(session, state, objective, bar, stop)
        if finished:
            _check_parameters(session, state)
        return finished
    except DivergenceError as err:
        snapshot, when = good
        _restore(session, snapshot)
        lr = session.config.lr
        raise DivergenceError(
            f"training diverged: {err}. Parameters were restored to {when}. Try a lower "
            f"learning rate (--lr, now {lr:g}) or gradient clipping (--clip-norm).") from None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
