"""Arithmetic precision of the fit's matrix products (``TrainConfig.precision``).

- ``fp32``: everything in float32 (the default).
- ``fp32-medium``: torch's float32 matmul precision is set to ``"medium"`` for the fit's
  forward and backward passes, and put back as it was after each (so the validation
  pass, evaluation and anything else in the process keep theirs). Where the hardware
  has no faster internal format (e.g. a CPU without AVX-512 BF16) nothing changes.
- ``bf16``: the products of linear and convolution layers run in bfloat16 (each such
  layer's forward under ``torch.autocast``), and each layer's output is cast straight back
  to float32. Everything else (parameters, optimizer state, activations, the products
  inside distributions such as a full-rank guide's ``scale_tril @ ε``, every log-density
  and the loss) stays float32; only the layers' inputs are rounded. On CUDA this is the
  same switch.

Each entry is a :class:`Precision`: two context managers the fit enters around a
step's forward pass (the loss) and its backward pass, and ``attach`` for what must
be in place for the whole fit (the layers' bfloat16 forwards). Evaluation and the
validation ELBO always run in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn

from pyro_vae.registry import Registry

PRECISIONS: Registry = Registry("precision")

# Layers whose product autocast runs in bfloat16: their outputs are cast back.
PRODUCT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                  nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


@dataclass(frozen=True)
class Precision:
    """How one precision setting is applied to a fit."""

    forward: Callable[[torch.device], ContextManager]
    """Entered around a step's loss computation."""
    backward: Callable[[torch.device], ContextManager]
    """Entered around a step's ``loss.backward()``."""
    attach: Callable[[nn.Module, torch.device], ContextManager] = \
        lambda module, device: contextlib.nullcontext()
    """Entered once for the whole fit, with the modules being fitted and their device."""


def _nothing(device: torch.device) -> ContextManager:
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(level: str) -> Iterator[None]:
    """torch's float32 matmul precision set to ``level`` inside, restored after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _bf16_product(forward: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    """``forward`` of a product layer with its product in bfloat16 and its output in float32."""
    def bf16_forward(*args, **kwargs) -> Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return out.float()
    return bf16_forward


@contextlib.contextmanager
def bf16_products(module: nn.Module, device: torch.device) -> Iterator[None]:
    """While inside, every product layer of ``module`` computes in bfloat16 and returns
    float32 (its forward is wrapped on the instance; put back after)."""
    layers = [m for m in module.modules() if isinstance(m, PRODUCT_LAYERS)]
    for layer in layers:
        layer.forward = _bf16_product(layer.forward, device)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again


PRECISIONS.register("fp32")(Precision(_nothing, _nothing))
PRECISIONS.register("fp32-medium")(Precision(lambda d: matmul_precision("medium"),
                                             lambda d: matmul_precision("medium")))
PRECISIONS.register("bf16")(Precision(_nothing, _nothing, bf16_products))
