"""Which pixels a story scores, and the checks that data can be scored so.

Every question of the form "does this likelihood take grey levels, 0/1 only, or the 8-bit
grid k/255?" is answered here, from the support of the site that scores x
(:func:`scored_pixels`), and every check that images fit the answer (:func:`check_binary`,
:func:`check_eight_bit`) names the first sample that does not.
"""

from __future__ import annotations

import enum

import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import constraints

from pyro_vae.traces import image_site
from pyro_vae.validation import DataError

LEVELS = 256
"""Levels of an 8-bit pixel."""
GRID_TOLERANCE = 1e-3
"""How far (in levels) 255·x may lie from an integer and still count as 8-bit: float32
pixels k/255 come back within 1e-4 of k; real-valued data off the grid lands there
for about 1 pixel in 500, so an image of many pixels is caught."""


class EightBit(constraints.Constraint):
    """Pixels k/255, k = 0 … 255: 8-bit images scaled to [0, 1]."""

    is_discrete = True
    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        k = value * (LEVELS - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < GRID_TOLERANCE)

    def __repr__(self) -> str:
        return "EightBit()"


eight_bit = EightBit()


class Pixels(enum.IntEnum):
    """What a story's image site can score (read from its support). Its truth value says
    "binary only", so ``True``/``False`` still mean binary / not binary wherever one is given."""

    ANY = 0
    BINARY = 1
    EIGHT_BIT = 2

    def __bool__(self) -> bool:
        return self is Pixels.BINARY


def check_eight_bit(x: Tensor, name: str, reason: str) -> None:
    """Pixels ``[N, D]`` in [0, 1] must lie on the 8-bit grid k/255; the first sample off it
    is named, with ``reason`` (who needs the grid and what to do instead)."""
    bad = ~eight_bit.check(x)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(len(x), -1).any(dim=1))[0])
        value = float(x[i][bad[i]][0])
        raise DataError(f"{name}: sample {i} has pixel value {value:.6g}, which is not on the "
                        f"8-bit grid k/255; {reason}")


def scored_pixels(trace: poutine.Trace, x: Tensor) -> Pixels:
    """What the site that scores ``x`` in ``trace`` can score, read off its support:
    :attr:`Pixels.BINARY` for {0, 1} only (a Bernoulli likelihood: grey levels then need a
    binarization), :attr:`Pixels.EIGHT_BIT` for the grid k/255, else :attr:`Pixels.ANY`."""
    support = trace.nodes[image_site(trace, x)]["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.boolean:
        return Pixels.BINARY
    return Pixels.EIGHT_BIT if isinstance(support, EightBit) else Pixels.ANY


BINARIZE_FLAGS = "choose --binarize dynamic or threshold, or a Gaussian likelihood"
"""How the command line asks for a binarization (the default fix :func:`check_binary` names)."""


def check_binary(x: Tensor, name: str, fix: str = BINARIZE_FLAGS) -> None:
    """A Bernoulli likelihood needs x in {0, 1}: grey levels need a binarization, which
    ``fix`` says how to ask for (the CLI's flags by default)."""
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(len(x), -1).any(dim=1))[0])
        raise DataError(
            f"{name}: sample {i} has values other than 0 and 1, which a Bernoulli likelihood "
            f"cannot score; {fix}")
