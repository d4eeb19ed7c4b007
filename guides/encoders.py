"""Encoder bodies: x ``[..., D]`` ↦ features ``[..., out_features]`` read by a guide's head.

Each builder takes D and, when known, the image shape (``[C, H, W]`` or ``[H, W]``); the
convolutional bodies read their flat rows as channel-major ``[C, H, W]`` images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from pyro_vae.config import ModelConfig
from pyro_vae.models import (
    ACTIVATIONS,
    FlatImages,
    ResidualBlock,
    conv_down,
    halvings,
    image_chw,
    mlp,
)
from pyro_vae.registry import Registry

ENCODERS: Registry = Registry("encoder")


class MLPEncoder(nn.Module):
    """An MLP body ending on its last hidden activation (its last gate with ``gated``)."""

    def __init__(self, data_dim: int, hidden_sizes: tuple[int, ...], activation: str = "relu",
                 gated: bool = False) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes: an MLP encoder needs at least one hidden layer")
        self.data_dim = data_dim
        self.out_features = hidden_sizes[-1]
        self.net = mlp(data_dim, hidden_sizes, None, activation, gated)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ENCODERS.register("mlp")
def mlp_encoder(cfg: ModelConfig, opts: object, data_dim: int,
                image_shape: tuple[int, ...] | None = None) -> nn.Module:
    return MLPEncoder(data_dim, cfg.hidden_sizes, cfg.activation)


@ENCODERS.register("gated")
def gated_encoder(cfg: ModelConfig, opts: object, data_dim: int,
                  image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The ``mlp`` encoder with gated hidden layers, h(x) ⊙ sigmoid(g(x)), as Tomczak &
    Welling's VampPrior nets have them; the gate is the nonlinearity (``--activation`` is
    not used)."""
    return MLPEncoder(data_dim, cfg.hidden_sizes, cfg.activation, gated=True)


class ConvEncoder(nn.Module):
    """Strided 3×3 convolutions (one per ``channels`` entry, each halving H and W), then a
    linear layer to ``features``: flat rows ``[..., C·H·W]`` ↦ ``[..., features]``."""

    def __init__(self, chw: tuple[int, int, int], channels: tuple[int, ...], features: int,
                 activation: str = "relu", blocks: int = 0) -> None:
        super().__init__()
        act = ACTIVATIONS.lookup(activation)
        hs = halvings(chw[1], len(channels), "conv encoder")
        ws = halvings(chw[2], len(channels), "conv encoder")
        layers: list[nn.Module] = [nn.Conv2d(chw[0], channels[0], 3, padding=1)] if blocks else []
        width = channels[0] if blocks else chw[0]
        for c in channels:
            layers += [conv_down(width, c), act()]
            layers += [ResidualBlock(c, activation) for _ in range(blocks)]
            width = c
        layers += [nn.Flatten(), nn.Linear(width * hs[-1] * ws[-1], features), act()]
        self.net = FlatImages(nn.Sequential(*layers), chw)
        self.data_dim = math.prod(chw)
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _channels(default: tuple[int, ...], order: str) -> tuple[int, ...]:
    return field(default=default, metadata={
        "help": f"widths of the stride-2 convolutions, {order}, comma-separated (one entry per "
                f"halving of H and W)", "parse": "int_list"})


def _features() -> int:
    return field(default=256, metadata={"help": "width of the linear layer after the "
                                                "convolutions", "parse": "positive_int"})


def _blocks() -> int:
    return field(default=1, metadata={"help": "residual blocks after each downsampling",
                                      "parse": "positive_int"})


@dataclass(frozen=True)
class ConvEncoderOptions:
    """Settings of the ``conv`` encoder."""

    channels: tuple[int, ...] = _channels((32, 64), "fine to coarse")
    features: int = _features()


@dataclass(frozen=True)
class ResNetEncoderOptions:
    """Settings of the ``resnet`` encoder."""

    channels: tuple[int, ...] = _channels((32, 64), "fine to coarse")
    blocks: int = _blocks()
    features: int = _features()


@ENCODERS.register("conv", options=ConvEncoderOptions)
def conv_encoder(cfg: ModelConfig, opts: ConvEncoderOptions, data_dim: int,
                 image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Strided convolutions over the ``[C, H, W]`` images (any H, W of at least 2^depth)."""
    chw = image_chw(image_shape, data_dim, "conv encoder")
    return ConvEncoder(chw, opts.channels, opts.features, cfg.activation)


@ENCODERS.register("resnet", options=ResNetEncoderOptions)
def resnet_encoder(cfg: ModelConfig, opts: ResNetEncoderOptions, data_dim: int,
                   image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A 3×3 stem, then per ``channels`` entry a strided convolution and ``blocks`` residual
    blocks."""
    chw = image_chw(image_shape, data_dim, "resnet encoder")
    return ConvEncoder(chw, opts.channels, opts.features, cfg.activation, opts.blocks)
