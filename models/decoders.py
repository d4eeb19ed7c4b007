"""Decoders f_θ: z ↦ the parameters of p(x | z), one vector of ``data_dim`` per z."""

from __future__ import annotations

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


@DECODERS.register("mlp")
def mlp_decoder(cfg: ModelConfig, data_dim: int) -> nn.Module:
    """Hidden sizes mirror the encoder's: ``cfg.hidden_sizes`` reversed."""
    return MLPDecoder(cfg.latent_dim, tuple(reversed(cfg.hidden_sizes)), data_dim, cfg.activation)
