"""Small network builders shared by decoders (here) and encoders (``pyro_vae.guides``):
MLPs, and the pieces of the convolutional stacks (image shape, side arithmetic,
residual blocks)."""

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


class GatedLinear(nn.Module):
    """A gated linear layer, h(x) ⊙ sigmoid(g(x)) with h and g linear (Dauphin et al. 2017;
    Tomczak & Welling's GatedDense): ``[..., in_features]`` → ``[..., out_features]``. One
    linear map gives h and g side by side, split by :class:`torch.nn.GLU`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)
        self.gate = nn.GLU(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(self.linear(x))


def mlp(
    in_features: int,
    hidden_sizes: Sequence[int],
    out_features: int | None,
    activation: str = "relu",
    gated: bool = False,
) -> nn.Sequential:
    """Linear layers of ``hidden_sizes`` with ``activation`` between them, or with
    ``gated`` :class:`GatedLinear` hidden layers, whose gate is their nonlinearity (no
    ``activation`` then).

    Maps ``[..., in_features]`` to ``[..., out_features]``. With
    ``out_features=None`` the stack ends on the last hidden activation, which
    is what an encoder body wants: features to be read by several heads.
    """
    act = ACTIVATIONS.lookup(activation)
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [GatedLinear(width, size)] if gated else [nn.Linear(width, size), act()]
        width = size
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def joined(*parts: Tensor) -> Tensor:
    """The parts ``[..., d_i]`` side by side, ``[..., Σ d_i]``, their leading dimensions
    broadcast first: what a network reads when one input carries enumerated values
    (``[K, N, d]``) and another the rows (``[N, d]``)."""
    shape = torch.broadcast_shapes(*(part.shape[:-1] for part in parts))
    return torch.cat([part.expand(shape + part.shape[-1:]) for part in parts], dim=-1)


# ---------------------------------------------------------------- convolutional stacks


def image_chw(image_shape: Sequence[int] | None, data_dim: int, who: str) -> tuple[int, int, int]:
    """The ``[C, H, W]`` a convolutional part works on: ``image_shape`` as ``(C, H, W)`` or
    ``(H, W)`` (one channel); without it, square images read from D = C·H·W with C in
    {1, 3} (a shipped story builds its parts from D alone). Anything else is refused."""
    shape = tuple(image_shape or ())
    if len(shape) == 2:
        shape = (1, *shape)
    if not shape:
        for channels in (1, 3):
            side = math.isqrt(data_dim // channels)
            if channels * side * side == data_dim:
                shape = (channels, side, side)
                break
    if len(shape) != 3 or math.prod(shape) != data_dim:
        raise ValueError(f"{who}: images of shape {list(image_shape or [data_dim])} cannot be "
                         f"read as [C, H, W] with C·H·W = D = {data_dim}; convolutional parts "
                         f"need images ([N, H, W] or [N, C, H, W] data)")
    return shape  # type: ignore[return-value]


def halvings(side: int, depth: int, who: str) -> list[int]:
    """Sides after each of ``depth`` stride-2 layers (⌈s/2⌉ each): ``[side, …, coarsest]``.
    Each layer needs at least two pixels to halve, so a side below 2^depth is refused."""
    if side < 2 ** depth:
        raise ValueError(f"{who}: an image side of {side} pixels cannot be halved {depth} "
                         f"times (it needs at least {2 ** depth}); use fewer channels entries "
                         f"(each is one stride-2 layer)")
    sides = [side]
    for _ in range(depth):
        sides.append((sides[-1] + 1) // 2)
    return sides


def conv_down(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3, stride 2, padding 1: a side s becomes ⌈s/2⌉."""
    return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)


def conv_up(c_in: int, c_out: int, size: tuple[int, int], out: tuple[int, int]) -> nn.ConvTranspose2d:
    """The transposed :func:`conv_down` from ``size`` to exactly ``out`` (each 2s−1 or 2s):
    the output padding picks which."""
    pad = tuple(o - (2 * s - 1) for s, o in zip(size, out))
    return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))), 3×3 convolutions keeping channels and size."""

    def __init__(self, channels: int, activation: str = "relu") -> None:
        super().__init__()
        act = ACTIVATIONS.lookup(activation)
        self.body = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1),
                                  act(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to exactly ``size`` (H, W), then a 3×3 convolution."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, size=self.size, mode="nearest"))


class FlatImages(nn.Module):
    """Runs an image network on flat rows: ``[..., C·H·W]`` → ``[B, C, H, W]`` → ``net`` →
    ``[..., out]`` flattened again, so the engine's rows stay ``[N, D]`` (channel-major)."""

    def __init__(self, net: nn.Module, chw: tuple[int, int, int]) -> None:
        super().__init__()
        self.net = net
        self.chw = chw

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x.reshape(-1, *self.chw))
        return y.reshape(x.shape[:-1] + (-1,))
