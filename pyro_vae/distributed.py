"""Data-parallel fitting over ``torch.distributed``, as ``torchrun`` launches it.

``torchrun --nproc-per-node N -m pyro_vae train ...`` starts N copies of the same command.
Each joins the process group (gloo on CPU, NCCL on CUDA, one device per rank) and fits the
same story through :class:`~torch.nn.parallel.DistributedDataParallel` over the
:class:`~pyro_vae.programs.Program` s that own its parameters:

- every epoch's permutation is drawn from the fit's seed, the same on every rank, and each
  step's global batch (``batch_size`` rows of it) is cut into N contiguous shards, one per
  rank (what ``DistributedSampler`` does, at the level of a step);
- each rank draws its Monte Carlo samples (and dynamic binarizations) from its own stream,
  seeded by :func:`rank_seed` from the seed and the rank (rank 0 keeps the seed itself, so
  one process is the plain fit);
- a rank's loss is the sum over its rows; gradients are summed over ranks (DDP's mean
  times N), so a step is the single-process step on the concatenated batch;
- the reported ELBO and the validation ELBO are sums over ranks divided by the global count;
- rank 0 alone holds the run folder's lock and writes it;
- every rank beats a heartbeat into the job's store (the ``TCPStore`` at ``MASTER_ADDR:
  MASTER_PORT``, torchrun's own) from a thread (:class:`Watch`): when a collective fails,
  the ranks whose heartbeat stopped are named (:class:`LostRankError`, one line), and a rank
  left waiting in a collective for a peer silent for ``PYRO_VAE_LOST_AFTER_S`` seconds (10)
  says so and exits with :data:`LOST_RANK_EXIT`, rather than waiting out the process
  group's timeout.

With no ``torchrun`` environment nothing here starts a process group, and the fit is the
single-process one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from pyro_vae.deprecated import MOVED_NAMES, forwarder

# A rank that waits longer than this for the others has lost them (a crashed peer); the
# default 30 minutes would leave a dead job holding its machines.
TIMEOUT = timedelta(minutes=float(os.environ.get("PYRO_VAE_DIST_TIMEOUT_MIN", "10")))

BEAT_S = 0.2
"""Seconds between two heartbeats of a rank."""
NAMING_S = 2.0
"""After a failed collective, a peer whose heartbeat has not moved for this long is lost."""
LOST_AFTER_S = float(os.environ.get("PYRO_VAE_LOST_AFTER_S", "10"))
"""A rank whose peer has been silent this long stops by itself (a hung peer, or a backend
that does not see a dead one), without waiting for a collective to fail."""
LOST_RANK_EXIT = 5
"""The exit status of a rank that stops because another was lost (``pyro_vae.cli.common``'s
``EXIT_LOST_RANK``)."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """The rank among the processes on this machine (which GPU it uses)."""

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher with its environment) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def current() -> World:
    """The running process group's view of this process; :data:`SINGLE` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


_STARTED: list[bool] = []  # whether start() made the process group (finish() ends only that)


def start(device: str) -> World:
    """Join the process group the launcher describes (NCCL when the fit runs on CUDA, else
    gloo); a process that was not launched so is :data:`SINGLE`. A group that is already
    running (a caller's own) is used as it is. With several ranks the heartbeats start
    (:class:`Watch`, until :func:`finish`)."""
    if not launched():
        return current()
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)  # "cuda" then means this rank's own device
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
        _STARTED.append(True)
    world = current()
    if world.parallel and not _WATCH:
        _GENERATION[0] += 1  # every rank runs its commands in the same order
        _WATCH.append(Watch(world, _GENERATION[0]))
    return world


def finish() -> None:
    """Stop the heartbeats and leave the process group :func:`start` made (at the end of
    the command)."""
    while _WATCH:
        _WATCH.pop().close()
    if _STARTED and dist.is_initialized():
        _STARTED.clear()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s random stream: ``seed`` itself on rank 0, else a 32-bit
    number derived from both (numpy's ``SeedSequence``: streams that do not overlap)."""
    if rank == 0:
        return seed
    entropy = seed % 2 ** 63  # SeedSequence takes non-negative entropy; --seed may be negative
    return int(np.random.SeedSequence(entropy, spawn_key=(rank,)).generate_state(1)[0])


def shard(rows: Tensor, world: World) -> Tensor:
    """This rank's contiguous share of ``rows`` (``[B]`` → about ``[B / size]``)."""
    return rows if not world.parallel else rows.tensor_split(world.size)[world.rank]


def _device() -> torch.device:
    """Where collectives put their tensors: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """Each of ``values`` summed over the ranks (in float64; unchanged for one process)."""
    if not world.parallel:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` is true on any rank, so that all of them take the same branch."""
    return bool(all_sum([float(flag)], world)[0] > 0)


def gather(value: Tensor | None, world: World) -> Tensor | None:
    """``value`` of every rank, stacked ``[size, ...]`` on the CPU (a random state to
    checkpoint); for one process, ``value`` itself."""
    if not world.parallel or value is None:
        return value
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value.cpu())
    return torch.stack(out)


def from_writer(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run folder name that holds the time)."""
    if not world.parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(action: Callable[[], Any], world: World) -> Any:
    """Run ``action`` on rank 0 only and return its result on every rank; an exception
    there is raised on every rank with the same message, so that no rank waits forever
    for a peer that has given up (e.g. a run folder refused to a second writer)."""
    result, error = None, None
    if world.writer:
        try:
            result = action()
        except Exception as err:  # noqa: BLE001 - carried to the other ranks, then re-raised
            error = err
    if not world.parallel:
        if error is not None:
            raise error
        return result
    shared = from_writer((result, None if error is None else (type(error), str(error))), world)
    if error is not None:
        raise error
    if shared[1] is not None:
        kind, message = shared[1]
        try:
            error = kind(message)  # the same kind, so that the CLI maps it to the same exit
        except Exception:  # noqa: BLE001 - a kind that takes other arguments
            error = RuntimeError(message)
        raise error
    return shared[0]


def check_same_world(trained_by: int, world: World, where: str) -> None:
    """A run resumes with the number of processes that trained it: each rank's random
    stream and share of every batch depend on it."""
    if trained_by != world.size:
        launch = ("torchrun --nproc-per-node " + str(trained_by) + " -m pyro_vae train --resume ..."
                  if trained_by > 1 else "pyro-vae train --resume ... (one process, no torchrun)")
        raise ValueError(f"{where} was trained by {trained_by} process(es) and this resume has "
                         f"{world.size}: its random streams and batch shards are per rank; "
                         f"resume it with the same number ({launch})")


@contextlib.contextmanager
def on_writer(world: World, enter: Callable[[], ContextManager]) -> Iterator[None]:
    """Hold ``enter()`` (the run folder's lock) on rank 0 alone for the ``with`` block; a
    refusal there is raised on every rank (see :func:`agree`)."""
    with contextlib.ExitStack() as stack:
        agree(lambda: stack.enter_context(enter()), world)
        yield


_WATCH: list["Watch"] = []  # the heartbeats start() began (finish() stops them)
_GENERATION = [0]  # the commands this process has watched: each one's keys are its own


class LostRankError(RuntimeError):
    """Ranks of the job stopped answering (their process died, or hangs): ``lost``, of
    ``world.size``; ``reporter`` is the lowest rank still running, the one that says so."""

    def __init__(self, lost: Sequence[int], world: World, folder: str | None = None) -> None:
        self.lost, self.world, self.folder = sorted(lost), world, folder
        self.reporter = min(set(range(world.size)) - set(self.lost))
        ranks = ", ".join(map(str, self.lost))
        where = folder or "RUN"
        super().__init__(
            f"rank {ranks} of {world.size} was lost (no heartbeat: its process died or hangs); "
            f"the other ranks stopped and {where} keeps its last checkpoint; continue with: "
            f"torchrun --nproc-per-node {world.size} -m pyro_vae train --resume {where}")


class Watch:
    """This rank's heartbeat and its view of the others' (see the module docstring): a
    counter per rank in the job's store, raised every :data:`BEAT_S` seconds by a daemon
    thread, which also notes when each peer's counter last moved."""

    def __init__(self, world: World, generation: int) -> None:
        self.world, self.folder = world, None
        self.prefix = f"pyro-vae/watch/{generation}/"
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                   is_master=False, timeout=timedelta(seconds=30),
                                   wait_for_workers=False)
        now = time.monotonic()
        self.moved = {r: (-1, now) for r in range(world.size) if r != world.rank}
        self.handled = threading.Event()  # the main thread is handling a failure itself
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pyro-vae-heartbeat", daemon=True)
        self.thread.start()

    def _key(self, what: str, rank: int) -> str:
        return f"{self.prefix}{what}/{rank}"

    def _run(self) -> None:
        while not self.stopping.wait(BEAT_S):
            try:
                self.store.add(self._key("beat", self.world.rank), 1)
                self._look()
            except Exception:  # noqa: BLE001 - the store is gone (the launcher died): keep going
                continue
            lost = self.silent(LOST_AFTER_S)
            if lost and not self.handled.is_set() and not self.stopping.is_set():
                self._give_up(lost)

    def _look(self) -> None:
        now = time.monotonic()
        for rank, (count, _) in list(self.moved.items()):
            if self.store.add(self._key("done", rank), 0):
                self.moved.pop(rank)  # it finished its command: silence is not a loss
                continue
            seen = self.store.add(self._key("beat", rank), 0)
            if seen != count:
                self.moved[rank] = (seen, now)

    def silent(self, seconds: float) -> list[int]:
        """The peers whose heartbeat has not moved for ``seconds``."""
        now = time.monotonic()
        return sorted(r for r, (_, when) in list(self.moved.items()) if now - when >= seconds)

    def _give_up(self, lost: list[int]) -> None:
        """A peer is silent and no collective has failed (it hangs, or the backend waits
        for a dead one): one line from the lowest live rank, and every live rank exits."""
        error = LostRankError(lost, self.world, self.folder)
        if self.world.rank == error.reporter:
            print(f"pyro-vae train: error: {error}", file=sys.__stderr__, flush=True)
        os._exit(LOST_RANK_EXIT)

    def close(self) -> None:
        """Say this rank is done (its silence is then no loss), and stop beating."""
        self.stopping.set()
        with contextlib.suppress(Exception):
            self.store.add(self._key("done", self.world.rank), 1)
        self.thread.join(timeout=2 * BEAT_S)


def lost_ranks(world: World, folder: str | None = None) -> LostRankError | None:
    """After a failure on this rank: the peers whose heartbeat has stopped, as the error
    to raise, waiting up to :data:`NAMING_S` seconds for a dead peer's silence to show;
    ``None`` when every peer still beats (the failure is this rank's own), or for one
    process. From here on the failure is the caller's to report (the thread does not stop
    the process)."""
    if not (world.parallel and _WATCH):
        return None
    watch = _WATCH[-1]
    watch.handled.set()
    deadline = time.monotonic() + NAMING_S + 5 * BEAT_S  # its silence, as the thread sees it
    while True:
        lost = watch.silent(NAMING_S)
        if lost or time.monotonic() >= deadline:
            return LostRankError(lost, world, folder or watch.folder) if lost else None
        time.sleep(BEAT_S / 2)


def note_folder(folder: str) -> None:
    """The run folder this command writes: a lost rank's message names it."""
    if _WATCH:
        _WATCH[-1].folder = folder


# Names that left this module in 0.2, kept for one release (pyro_vae/deprecated.py).
__getattr__ = forwarder(__name__, MOVED_NAMES[__name__])
