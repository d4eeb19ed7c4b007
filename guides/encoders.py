"""Encoder bodies: x ``[..., D]`` ↦ features ``[..., out_features]`` read by a guide's head."""

from __future__ import annotations

from torch import Tensor, nn

from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import mlp
from pyro_vae.registry import Registry

ENCODERS: Registry = Registry("encoder")


class MLPEncoder(nn.Module):
    """An MLP body ending on its last hidden activation."""

    def __init__(self, data_dim: int, hidden_sizes: tuple[int, ...], activation: str = "relu") -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes: an MLP encoder needs at least one hidden layer")
        self.data_dim = data_dim
        self.out_features = hidden_sizes[-1]
        self.net = mlp(data_dim, hidden_sizes, None, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ENCODERS.register("mlp")
def mlp_encoder(cfg: ModelConfig, opts: object, data_dim: int) -> nn.Module:
    return MLPEncoder(data_dim, cfg.hidden_sizes, cfg.activation)
