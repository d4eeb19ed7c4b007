"""The checks that make a recorded loss or training step trustworthy, shared by the traced
and compiled objectives (:mod:`pyro_vae.infer.objectives`), the whole-step program
(:mod:`pyro_vae.infer.fused`) and AIS's traced energy (:mod:`pyro_vae.evaluation.annealing`).

A recording (``torch.jit.trace``, ``make_fx``) is one path through Python code; it is used
only when no tensor value was read in Python while recording (outside the libraries in
:data:`LIBRARIES`) and its first :data:`JIT_CHECK_CALLS` calls agree with the unrecorded
code to rounding (:func:`first_difference`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Callable, Iterable, Iterator

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from pyro_vae.programs import cuda_devices

JIT_CHECK_CALLS = 2


JIT_RTOL, JIT_ATOL = 1e-4, 1e-5


LIBRARIES = tuple(os.path.dirname(m.__file__) + os.sep
                   for m in (torch, __import__("pyro"), __import__("pyro_vae")))


class JitFallbackWarning(UserWarning):
    """The traced loss could not be trusted for this story; the untraced one is used."""


def warn_fallback(message: str, where: tuple[str, int] | None = None) -> None:
    """A :class:`JitFallbackWarning` shown at the user's code, never at pyro-vae's: at
    ``where`` (the story's file and line that the reason names), else at the first caller
    outside torch, Pyro and pyro-vae (the script that called ``fit``)."""
    if where is None:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(LIBRARIES):
            frame = frame.f_back
        if frame is None:
            warnings.warn(message, JitFallbackWarning, stacklevel=2)
            return
        where = (frame.f_code.co_filename, frame.f_lineno)
    warnings.warn_explicit(message, JitFallbackWarning, where[0], where[1])


def one_line_fallbacks(show: Callable) -> Callable:
    """A ``warnings.showwarning`` for the command line: a :class:`JitFallbackWarning` is one
    line, ``warning: ...``, with no path (its reason names the story's file and line where
    it has one); any other warning goes to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, JitFallbackWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


@contextlib.contextmanager
def kept_buffers(modules: list[nn.Module]) -> Iterator[list[str]]:
    """Inside, the modules' buffers may be written (recording a program runs it); after,
    they hold their values from before, and the yielded list names those that were written
    in place."""
    named = [(name, b) for m in modules for name, b in m.named_buffers()]
    saved = [(b._version, b.clone()) for _, b in named]
    written: list[str] = []
    try:
        yield written
    finally:
        written += [name for (name, b), (version, _) in zip(named, saved) if b._version != version]
        with torch.no_grad():
            for (_, b), (_, value) in zip(named, saved):
                b.copy_(value)


@contextlib.contextmanager
def quiet_compiler() -> Iterator[None]:
    """While compiling: torch's C++-extension logger warns on every compile that a CUDA build
    found no CUDA runtime (on any CPU-only machine), which says nothing about the fit."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def without_float_copies(elbo: ELBO) -> Iterator[None]:
    """While recording: Pyro's particle loss also sums a Python float copy of each term
    (``torch_item``, for the loss it reports). make_fx cannot read a value while recording,
    and :class:`SurrogateLoss` discards that copy, so there it reads 0."""
    particle_loss = getattr(type(elbo), "_differentiable_loss_particle", None)
    module = None if particle_loss is None else sys.modules[particle_loss.__module__]
    original = getattr(module, "torch_item", None)
    if original is None:
        yield
        return
    module.torch_item = lambda value: 0.0
    try:
        yield
    finally:
        module.torch_item = original


def checked_against(untraced: Callable[[], Tensor], traced: Callable[[], Tensor],
             params: list[Tensor]) -> tuple[Tensor, str | None]:
    """Both losses from the same random state (the traced one last, so that its draws
    are the ones the fit goes on with): the traced loss, and why it differs or ``None``."""
    with torch.random.fork_rng(devices=cuda_devices(*params)):
        expected = _loss_and_grads(untraced(), params, retain=False)
    loss = traced()
    got = _loss_and_grads(loss, params, retain=True)
    names = ("loss", *(f"gradient {i}" for i in range(len(params))))
    return loss, first_difference(names, expected, got, "the untraced one")


def first_difference(names: Iterable[str], expected: Iterable, got: Iterable,
                     reference: str) -> str | None:
    """Why a recorded program's values ``got`` differ from ``expected`` (tensors or numbers,
    named by ``names``) beyond rounding, or ``None``: the first that differs."""
    for what, a, b in zip(names, expected, got):
        a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
        if not torch.allclose(a, b, rtol=JIT_RTOL, atol=JIT_ATOL * max(1.0, float(a.abs().max()))):
            return (f"its {what} differs from {reference} by {float((a - b).abs().max()):.3g}: "
                    f"the program's control flow depends on values")
    return None


def _loss_and_grads(loss: Tensor, params: list[Tensor], retain: bool) -> list[Tensor]:
    if not params or not loss.requires_grad:  # a program with nothing to train
        return [loss.detach()]
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return [loss.detach()] + [torch.zeros_like(p) if g is None else g.detach()
                              for p, g in zip(params, grads)]
