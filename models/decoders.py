"""Decoders f_θ: z ↦ the parameters of p(x | z), one vector of ``data_dim`` per z.

Each builder takes D and, when known, the image shape (``[C, H, W]`` or ``[H, W]``); the
convolutional decoders paint ``[C, H, W]`` images and return them as channel-major rows.
A decoder is chosen on its own: it need not mirror the encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import (
    ACTIVATIONS,
    ResidualBlock,
    Upsample,
    conv_up,
    halvings,
    image_chw,
    mlp,
)
from pyro_vae.registry import Registry

DECODERS: Registry = Registry("decoder")


class MLPDecoder(nn.Module):
    """An MLP from ``[..., latent_dim]`` to ``[..., data_dim]`` (logits or means)."""

    def __init__(self, latent_dim: int, hidden_sizes: tuple[int, ...], data_dim: int,
                 activation: str = "relu", gated: bool = False) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        self.net = mlp(latent_dim, hidden_sizes, data_dim, activation, gated)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@dataclass(frozen=True)
class MLPDecoderOptions:
    """Settings of the ``mlp`` decoder."""

    hidden: tuple[int, ...] = field(default=(), metadata={
        "help": "hidden widths, comma-separated (default: the encoder's, reversed)",
        "parse": "int_list"})


@DECODERS.register("mlp", options=MLPDecoderOptions)
def mlp_decoder(cfg: ModelConfig, opts: MLPDecoderOptions, data_dim: int,
                image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Hidden sizes ``opts.hidden``, or the encoder's (``cfg.hidden_sizes``) reversed."""
    hidden = opts.hidden or tuple(reversed(cfg.hidden_sizes))
    return MLPDecoder(cfg.latent_dim, hidden, data_dim, cfg.activation)


@DECODERS.register("gated", options=MLPDecoderOptions)
def gated_decoder(cfg: ModelConfig, opts: MLPDecoderOptions, data_dim: int,
                  image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The ``mlp`` decoder with gated hidden layers, h(z) ⊙ sigmoid(g(z)), as Tomczak &
    Welling's VampPrior nets have them; the gate is the nonlinearity (``--activation`` is
    not used)."""
    hidden = opts.hidden or tuple(reversed(cfg.hidden_sizes))
    return MLPDecoder(cfg.latent_dim, hidden, data_dim, cfg.activation, gated=True)


class ConvDecoder(nn.Module):
    """z ``[..., latent_dim]`` ↦ a linear map to ``channels[0]`` maps at the coarsest size,
    then per ``channels`` entry one upsampling by 2 (transposed 3×3 convolutions, or with
    ``blocks`` > 0 residual blocks then nearest-neighbour upsampling and a 3×3 convolution),
    ending on exactly ``[C, H, W]``, returned as rows ``[..., C·H·W]``."""

    def __init__(self, latent_dim: int, chw: tuple[int, int, int], channels: tuple[int, ...],
                 hidden: int, activation: str = "relu", blocks: int = 0) -> None:
        super().__init__()
        act = ACTIVATIONS.lookup(activation)
        c, h, w = chw
        who = "resnet decoder" if blocks else "conv decoder"
        sizes = list(zip(halvings(h, len(channels), who), halvings(w, len(channels), who)))[::-1]
        head = [nn.Linear(latent_dim, hidden), act()] if hidden else []
        layers: list[nn.Module] = [*head, nn.Linear(hidden or latent_dim,
                                                    channels[0] * math.prod(sizes[0])), act(),
                                   nn.Unflatten(-1, (channels[0], *sizes[0]))]
        widths = list(channels) + ([channels[-1]] if blocks else [c])
        for i in range(len(channels)):
            if blocks:
                layers += [ResidualBlock(widths[i], activation) for _ in range(blocks)]
                layers += [Upsample(widths[i], widths[i + 1], sizes[i + 1])]
            else:
                layers += [conv_up(widths[i], widths[i + 1], sizes[i], sizes[i + 1]), act()]
        if blocks:  # the residual path ends on a 3×3 convolution to the image's channels
            layers += [act(), nn.Conv2d(widths[-1], c, 3, padding=1)]
        else:  # the last transposed convolution gives the C channels: no activation after it
            layers.pop()
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.data_dim = math.prod(chw)

    def forward(self, z: Tensor) -> Tensor:
        x = self.net(z.reshape(-1, self.latent_dim))
        return x.reshape(z.shape[:-1] + (self.data_dim,))


def _channels() -> tuple[int, ...]:
    return field(default=(64, 32), metadata={
        "help": "widths before each upsampling by 2, coarse to fine, comma-separated (one "
                "entry per doubling of H and W)", "parse": "int_list"})


@dataclass(frozen=True)
class ConvDecoderOptions:
    """Settings of the ``conv`` decoder."""

    channels: tuple[int, ...] = _channels()
    hidden: int = field(default=256, metadata={
        "help": "width of the linear layer between z and the convolutions",
        "parse": "positive_int"})


@dataclass(frozen=True)
class ResNetDecoderOptions:
    """Settings of the ``resnet`` decoder."""

    channels: tuple[int, ...] = _channels()
    blocks: int = field(default=1, metadata={"help": "residual blocks before each upsampling",
                                             "parse": "positive_int"})


@DECODERS.register("conv", options=ConvDecoderOptions)
def conv_decoder(cfg: ModelConfig, opts: ConvDecoderOptions, data_dim: int,
                 image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Transposed convolutions up to the ``[C, H, W]`` images (any H, W of at least 2^depth)."""
    chw = image_chw(image_shape, data_dim, "conv decoder")
    return ConvDecoder(cfg.latent_dim, chw, opts.channels, opts.hidden, cfg.activation)


@DECODERS.register("resnet", options=ResNetDecoderOptions)
def resnet_decoder(cfg: ModelConfig, opts: ResNetDecoderOptions, data_dim: int,
                   image_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Residual blocks and nearest-neighbour upsampling up to the ``[C, H, W]`` images."""
    chw = image_chw(image_shape, data_dim, "resnet decoder")
    return ConvDecoder(cfg.latent_dim, chw, opts.channels, 0, cfg.activation, opts.blocks)
