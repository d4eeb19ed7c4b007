"""Decoders f_θ: z ↦ the parameters of p(x | z), one vector of ``data_dim`` per z."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import mlp
from pyro_vae.registry import Registry

DECODERS: Registry = Registry("decoder")


class MLPDecoder(nn.Module):
    """An MLP from ``[..., latent_dim]`` to ``[..., data_dim]`` (logits or means)."""

    def __init__(self, latent_dim: int, hidden_sizes: tuple[int, ...], data_dim: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        self.net = mlp(latent_dim, hidden_sizes, data_dim, activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@dataclass(frozen=True)
class MLPDecoderOptions:
    """Settings of the ``mlp`` decoder."""

    hidden: tuple[int, ...] = field(default=(), metadata={
        "help": "hidden widths, comma-separated (default: the encoder's, reversed)",
        "parse": "int_list"})


@DECODERS.register("mlp", options=MLPDecoderOptions)
def mlp_decoder(cfg: ModelConfig, opts: MLPDecoderOptions, data_dim: int) -> nn.Module:
    """Hidden sizes ``opts.hidden``, or the encoder's (``cfg.hidden_sizes``) reversed."""
    hidden = opts.hidden or tuple(reversed(cfg.hidden_sizes))
    return MLPDecoder(cfg.latent_dim, hidden, data_dim, cfg.activation)
