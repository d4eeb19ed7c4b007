"""Small network builders shared by decoders (here) and encoders (``pyro_vae.guides``)."""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import torch
from torch import Tensor, nn

from pyro_vae.registry import Registry

T = TypeVar("T", float, Tensor)

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("softplus")(nn.Softplus)
ACTIVATIONS.register("elu")(nn.ELU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("silu")(nn.SiLU)


def inverse_softplus(y: T) -> T:
    """The raw value whose softplus is ``y`` (> 0), elementwise: to start a
    softplus-parameterized scale at a chosen value. A float stays a float (computed
    in double precision), a tensor a tensor of its own dtype."""
    if isinstance(y, Tensor):
        return y + torch.log(-torch.expm1(-y))
    return y + math.log(-math.expm1(-y))


def mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int | None,
    activation: str = "relu",
) -> nn.Sequential:
    """Linear layers of ``hidden_sizes`` with ``activation`` between them.

    Maps ``[..., in_features]`` to ``[..., out_features]``. With
    ``out_features=None`` the stack ends on the last hidden activation, which
    is what an encoder body wants: features to be read by several heads.
    """
    act = ACTIVATIONS.lookup(activation)
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), act()]
        width = size
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
