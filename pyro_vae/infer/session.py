"""One fit's live objects (:class:`FitSession`): the story and guide on their device, the
optimizer, the data and the random streams; and the checks made before the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from torch import Tensor, nn

from pyro_vae import distributed
from pyro_vae.config import TrainConfig
from pyro_vae.data import Data
from pyro_vae.distributed import SINGLE, World
from pyro_vae.infer.batches import Batches, check_batches, check_labelled_every
from pyro_vae.infer.inits import INITS, init_options, initialize
from pyro_vae.infer.precision import PRECISIONS
from pyro_vae.infer.schedules import SCHEDULES, check_schedule
from pyro_vae.pixels import Pixels, check_binary, check_eight_bit, scored_pixels
from pyro_vae.programs import Program, as_program, check_fields, cuda_devices, unique_parameters
from pyro_vae.state import TrainState
from pyro_vae.traces import slice_rows, trace_program

# The fit's own chosen parts, by the TrainConfig field that names them; TrainConfig.options
# holds their settings under the same keys (the command line makes their flags from them).
TRAIN_PARTS = {"lr_schedule": SCHEDULES, "init": INITS}


@dataclass
class FitSession:
    """The live objects of one fit, handed to callbacks (e.g. to write a checkpoint)."""

    model: Program
    guide: Program
    data: Data
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    device: torch.device
    perm_rng: torch.Generator
    world: World = SINGLE
    """The processes fitting together (``torchrun``); one process by default."""
    ddp: nn.Module | None = None
    """The objective wrapped in ``DistributedDataParallel`` when ``world`` has several ranks."""
    fused: Any = None
    """The whole step compiled as one program (``elbo-compile``, ``iwae-compile`` and a
    long ``elbo-auto`` fit, where it applies): a :class:`~pyro_vae.infer.fused.FusedStep`,
    which is built from the session, so this module does not import it."""
    batches: Batches | None = None
    """Which rows each step of an epoch takes (built by :func:`start_session`)."""

    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"model": self.model, "guide": self.guide})

    def parameters(self) -> list[Tensor]:
        """Every parameter the optimizer steps."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def steps_per_epoch(self) -> int:
        if self.batches is None:
            self.batches = Batches(self.config, self.data, self.world)
        return self.batches.steps

    def capture_rng(self, state: TrainState) -> None:
        """Copy every random state the fit draws from into ``state`` (with several ranks,
        each rank's stream as a row ``[size, ...]``; a collective: every rank calls it)."""
        state.perm_rng = self.perm_rng.get_state()
        state.torch_rng = distributed.gather(torch.get_rng_state(), self.world)
        if self.device.type == "cuda":
            state.cuda_rng = distributed.gather(torch.cuda.get_rng_state(self.device), self.world)

    def restore_rng(self, state: TrainState) -> None:
        # A copy of the row: set_rng_state reads a view's storage from its start.
        mine = (lambda t: t[self.world.rank].clone()) if self.world.parallel else (lambda t: t)  # noqa: E731
        if state.perm_rng is not None:
            self.perm_rng.set_state(state.perm_rng)
        if state.torch_rng is not None:
            torch.set_rng_state(mine(state.torch_rng))
        if state.cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine(state.cuda_rng), self.device)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:i]`` or ``auto`` (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def make_optimizer(model: nn.Module, guide: nn.Module, cfg: TrainConfig,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """Adam over every parameter once. On CPU and CUDA it is the fused kernel: the same
    update (tests/test_fit_speed_paths.py), one call instead of ~10 ops per tensor."""
    fused = device is not None and device.type in ("cpu", "cuda")
    params = unique_parameters(model, guide)
    if not params:
        raise ValueError("the story and its guide have no parameters to train (no nn.Module "
                         "parameters, pyro.param or pyro.module statements)")
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            fused=fused or None)


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, naming the argument."""
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "particles": cfg.particles, "val_every": cfg.val_every}
    for name, value in positive.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value}")
    if not cfg.beta > 0:
        raise ValueError(f"beta must be positive, got {cfg.beta}: poutine.scale cannot weight the "
                         f"latent site by 0 (for a near-plain autoencoder use a small beta, e.g. 1e-3)")
    if cfg.kl_warmup < 0:
        raise ValueError(f"kl_warmup must be zero or positive, got {cfg.kl_warmup}")
    if cfg.clip_norm is not None and not cfg.clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {cfg.clip_norm}")
    if cfg.early_stopping is not None and cfg.early_stopping < 1:
        raise ValueError(f"early_stopping must be at least 1 epoch, got {cfg.early_stopping}")
    PRECISIONS.lookup(cfg.precision)
    unknown = sorted(set(cfg.options) - set(TRAIN_PARTS))
    if unknown:
        raise ValueError(f"options: unknown kind {unknown[0]!r}; TrainConfig.options holds "
                         f"{', '.join(TRAIN_PARTS)}")
    check_schedule(cfg)
    _check_adam(cfg)
    init_options(cfg)
    check_labelled_every(cfg)


def _check_adam(cfg: TrainConfig) -> None:
    """Adam's betas in [0, 1) (a running mean's decay) and a positive eps."""
    betas = tuple(cfg.adam_betas) if isinstance(cfg.adam_betas, (tuple, list)) else ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"adam_betas (--adam-betas) must be two numbers in [0, 1), the decay "
                         f"rates of Adam's running means, got {cfg.adam_betas}")
    if not 0 < cfg.adam_eps < math.inf:
        raise ValueError(f"adam_eps (--adam-eps) must be a positive number, got {cfg.adam_eps}")


def _check_data(model: Program, data: Data) -> None:
    """Images a story scores on {0, 1} only (a Bernoulli likelihood) must be 0 or 1, and
    images it scores on the 8-bit grid must lie on k/255, when no binarization is asked for;
    read from a trace of the story, whatever its parts."""
    if data.binarize != "none":
        return
    x = data.train.x[:2]
    with pyro.validation_enabled(False):  # the check below says what is wrong, by sample
        trace = trace_program(model, x, slice_rows(data.train.fields(), 0, 2))
    pixels = scored_pixels(trace, x)
    if pixels == Pixels.BINARY:
        for name in ("train", "val", "test"):
            check_binary(getattr(data, name).x, f"{data.source} {name} images")
    elif pixels == Pixels.EIGHT_BIT:
        for name in ("train", "val", "test"):
            check_eight_bit(getattr(data, name).x, f"{data.source} {name} images",
                            "the story scores x on 8-bit pixels (e.g. discretized-logistic)")


def materialize(model: Program, guide: Program, data: Data) -> None:
    """Run guide and model once on two training rows, so that every ``pyro.param`` site
    exists before the optimizer is built; the caller's random state is left as it was."""
    x, batch = data.train.x[:2], slice_rows(data.train.fields(), 0, 2)
    with torch.random.fork_rng(devices=cuda_devices(x)):
        for program in (guide, model):
            trace_program(program, x, batch)


def start_session(model: Callable, guide: Callable, data: Data, config: TrainConfig,
                  state: TrainState | None, optimizer_state: dict | None) -> tuple[FitSession, TrainState]:
    """Move everything to the device, build the optimizer and seed (or restore) the RNGs."""
    check_train_config(config)
    model, guide = as_program(model, "the story"), as_program(guide, "the guide")
    for program in (model, guide):
        check_fields(program, data.train.fields(), data.source)
    _check_data(model, data)
    device = resolve_device(config.device)
    model.to(device)
    guide.to(device)
    data = data.to(device)
    materialize(model, guide, data)
    world = distributed.current()
    check_batches(config, data, world)
    session = FitSession(model, guide, data, config, make_optimizer(model, guide, config, device),
                         device, torch.Generator(), world)
    session.batches = Batches(config, data, world)
    for program in (model, guide):
        program.freeze_sites()
    if optimizer_state is not None:
        session.optimizer.load_state_dict(optimizer_state)
        for group in session.optimizer.param_groups:  # a resumed run may change its rate
            group["lr"] = config.lr
    if state is None:
        initialize(config, session.modules())  # a resumed fit's parameters are checkpointed
        state = TrainState(world_size=world.size)
        # Each rank draws from its own stream; the permutation is the same on every rank.
        pyro.set_rng_seed(distributed.rank_seed(config.seed, world.rank))
        session.perm_rng.manual_seed(config.seed)
    else:
        distributed.check_same_world(state.world_size, world, "the checkpointed fit")
        session.restore_rng(state)
    return session, state
