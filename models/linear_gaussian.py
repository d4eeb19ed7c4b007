"""Probabilistic PCA, the linear-Gaussian VAE whose answers are known exactly.

.. code-block:: text

    z ~ N(0, I_d)
    x ~ N(W z + b, σ² I_D)

so that p(x) = N(b, W Wᵀ + σ² I) and p(z | x) = N(M⁻¹ Wᵀ (x − b), σ² M⁻¹)
with M = WᵀW + σ² I. Built as ``VAE(StandardNormal, LinearDecoder, Gaussian)``
(decoder ``"linear"`` with likelihood ``"gaussian-fixed"`` or ``"gaussian"``);
the functions here give the closed forms that the estimators are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_vae.config import ModelConfig
from pyro_vae.models.decoders import DECODERS


class LinearDecoder(nn.Module):
    """f(z) = W z + b, mapping ``[..., latent_dim]`` to ``[..., data_dim]``."""

    def __init__(self, latent_dim: int, data_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_dim, data_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)


@DECODERS.register("linear")
def linear_decoder(cfg: ModelConfig, opts: object, data_dim: int,
                   image_shape: tuple[int, ...] | None = None) -> nn.Module:
    return LinearDecoder(cfg.latent_dim, data_dim)


@dataclass(frozen=True)
class LinearGaussian:
    """The parameters of a pPCA model: ``W`` ``[D, d]``, ``b`` ``[D]``, scalar ``sigma``."""

    W: Tensor
    b: Tensor
    sigma: float

    @classmethod
    def of(cls, model: nn.Module) -> "LinearGaussian":
        """Read W, b and σ off a ``VAE`` with a linear decoder and a one-σ Gaussian likelihood."""
        if not isinstance(model.decoder, LinearDecoder):
            raise TypeError("LinearGaussian.of needs a VAE whose decoder is LinearDecoder")
        sigma = model.likelihood.sigma().detach()
        if sigma.numel() != 1:
            raise TypeError("LinearGaussian.of needs a likelihood with a single σ")
        lin = model.decoder.linear
        return cls(lin.weight.detach(), lin.bias.detach(), float(sigma))

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W Wᵀ + σ² I), event shape ``[D]``."""
        D = self.W.shape[0]
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(D, dtype=self.W.dtype, device=self.W.device)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) for x ``[N, D]``: ``[N]`` (nats)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact p(z | x): means ``[N, d]`` and the shared covariance ``[d, d]``."""
        d = self.W.shape[1]
        M = self.W.T @ self.W + self.sigma**2 * torch.eye(d, dtype=self.W.dtype, device=self.W.device)
        mean = torch.linalg.solve(M, self.W.T @ (x - self.b).T).T
        return mean, self.sigma**2 * torch.linalg.inv(M)
