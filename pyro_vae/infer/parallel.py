"""Data-parallel fitting under ``torchrun``: the objective as one module wrapped in
``DistributedDataParallel`` (the process group itself is :mod:`pyro_vae.distributed`).
"""

from __future__ import annotations

from typing import Callable

import pyro
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.infer.objectives import Objective
from pyro_vae.programs import cuda_devices


class Loss(nn.Module):
    """The objective on a story and its guide as one module, so that
    :class:`DistributedDataParallel` can wrap a single ``forward`` that touches every parameter."""

    def __init__(self, model: nn.Module, guide: nn.Module, objective) -> None:
        super().__init__()
        self.model, self.guide = model, guide
        object.__setattr__(self, "objective", objective)  # not a module: keep it out of the tree

    def forward(self, x: Tensor, beta: float, batch: dict[str, Tensor]) -> Tensor:
        """Minus the objective summed over the rows of ``x`` ``[B, D]`` (a scalar)."""
        return self.objective.differentiable_loss(self.model, self.guide, x, beta=beta,
                                                  batch=batch)


def data_parallel(model: nn.Module, guide: nn.Module, objective, device: torch.device,
                  example: Callable[[], tuple[Tensor, dict[str, Tensor]]]) -> nn.Module:
    """:class:`Loss` wrapped in :class:`DistributedDataParallel`; rank 0's parameters are
    broadcast to every rank on the way in. ``example()`` gives a few training rows ``x``
    ``[B, D]`` and their extras, to find out once whether every parameter gets a gradient."""
    loss = Loss(model, guide, objective)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # A story may leave a parameter out of the loss (a branch, a module it never calls);
    # only then must DDP search the graph for it every step (find_unused_parameters).
    return DistributedDataParallel(loss, device_ids=ids,
                                   find_unused_parameters=not _every_parameter_used(loss, example))


def _every_parameter_used(loss: Loss, example: Callable[[], tuple[Tensor, dict[str, Tensor]]]) -> bool:
    """Whether one loss on the example rows reaches every parameter; the random state and a
    traced objective's cache are left as they were (the untraced loss is used)."""
    params = [p for p in loss.parameters() if p.requires_grad]
    untraced = Objective.differentiable_loss if isinstance(loss.objective, Objective) \
        else type(loss.objective).differentiable_loss
    with torch.random.fork_rng(devices=cuda_devices(*params)), pyro.validation_enabled(False):
        x, batch = example()
        value = untraced(loss.objective, loss.model, loss.guide, x, beta=1.0, batch=batch)
        grads = torch.autograd.grad(value, params, allow_unused=True)
    return all(g is not None for g in grads)
