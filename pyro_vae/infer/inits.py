"""Initialization of a fit's layers (``TrainConfig.init``), for recipes that state one.

- ``default``: every layer keeps the values torch gave it when it was built (by
  ``build_vae`` or the story's factory, under the seed given there).
- ``normal``: every weight of every linear and (transposed) convolution layer of model
  and guide ~ N(0, std²), every bias 0. Other parameters (a mixture prior's means, a
  learned σ, ``pyro.param`` sites) keep their values.
- ``glorot``: every such weight ~ U(−a, a) with a = gain·√(6 / (fan_in + fan_out)) (Glorot
  & Bengio 2010, meant for tanh layers; the start of Burda et al.'s public IWAE code), every
  bias 0; other parameters as with ``normal``.

The fit applies it once, when it starts from scratch: a resumed fit's parameters come
from its checkpoint. The draws come from a generator of their own, seeded from the fit's
seed, so that they are the same on every device and rank and leave the fit's own random
stream (and the caller's) as it was.

This module imports only :mod:`pyro_vae.registry`, :mod:`pyro_vae.config` and torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.registry import Registry

INITS: Registry = Registry("initialization")

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
          nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# The initialization's stream is the seed's stream shifted by this: the layers' defaults
# were drawn from the seed's own stream, and drawing from it again would make some normal
# weights copies (times std) of values other parameters were built with.
INIT_STREAM = 0x1417


@INITS.register("default")
def torch_default(opts: Any, layers: Iterable[nn.Module], generator: torch.Generator) -> None:
    """torch's own initialization, as the layers were built: nothing changes."""


def _check_positive(value: float, init: str, name: str) -> None:
    """Refuse a setting that is not a finite positive number, naming it and its flag."""
    if not 0 < value < math.inf:
        raise ValueError(f"the {init} initialization's {name} (--init-{init}-{name}) must be a "
                         f"positive number, got {value}")


@dataclass(frozen=True)
class NormalOptions:
    """Settings of the ``normal`` initialization."""

    std: float = field(default=1e-3, metadata={
        "help": "standard deviation of the weights (biases start at 0)", "parse": "float"})

    def __post_init__(self) -> None:
        _check_positive(self.std, "normal", "std")


@INITS.register("normal", options=NormalOptions)
def normal(opts: NormalOptions, layers: Iterable[nn.Module], generator: torch.Generator) -> None:
    """Weights ~ N(0, ``opts.std``²), drawn on the CPU in float32; biases 0."""
    _redraw(layers, lambda w: torch.randn(w.shape, generator=generator) * opts.std)


@dataclass(frozen=True)
class GlorotOptions:
    """Settings of the ``glorot`` initialization."""

    gain: float = field(default=1.0, metadata={
        "help": "the bound's factor: a = gain·√(6 / (fan_in + fan_out))", "parse": "float"})

    def __post_init__(self) -> None:
        _check_positive(self.gain, "glorot", "gain")


@INITS.register("glorot", options=GlorotOptions)
def glorot(opts: GlorotOptions, layers: Iterable[nn.Module], generator: torch.Generator) -> None:
    """Weights ~ U(−a, a), a = ``opts.gain``·√(6 / (fan_in + fan_out)), drawn on the CPU in
    float32; biases 0. A convolution's fans count its kernel's taps (torch's convention:
    the weight's dimensions 1 and 0 times the kernel's size)."""
    def draw(weight: torch.Tensor) -> torch.Tensor:
        taps = math.prod(weight.shape[2:])
        fan_in, fan_out = weight.shape[1] * taps, weight.shape[0] * taps
        bound = opts.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(weight.shape, generator=generator) * 2 - 1) * bound

    _redraw(layers, draw)


def _redraw(layers: Iterable[nn.Module], draw: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Each layer's weight replaced by ``draw(weight)`` (a CPU tensor of its shape, in the
    layers' order, so one generator gives the same draws on every device); biases 0."""
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(draw(layer.weight))
            if layer.bias is not None:
                layer.bias.zero_()


def init_options(cfg: TrainConfig) -> Any:
    """The options of ``cfg``'s initialization: its defaults and what ``cfg.options`` gives
    for it (unknown keys, wrong types and values out of range refused)."""
    for name in cfg.options.get("init", {}):
        INITS.lookup(name)
    return INITS.options(cfg.init, cfg.options.get("init", {}).get(cfg.init))


def initialize(cfg: TrainConfig, modules: nn.Module) -> None:
    """Apply ``cfg.init`` to every layer of ``modules`` (e.g. ``ModuleDict(model=...,
    guide=...)``; a layer they share is initialized once), from ``cfg.seed``."""
    layers = [m for m in modules.modules() if isinstance(m, LAYERS)]
    generator = torch.Generator().manual_seed((cfg.seed + INIT_STREAM) % 2 ** 64)
    INITS.lookup(cfg.init)(init_options(cfg), layers, generator)
