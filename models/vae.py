"""The variational autoencoder as a generative story."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor, nn


class VAE(nn.Module):
    """The generative story, for each of N images:

    .. code-block:: text

        z_n ~ p(z)                  prior
        x_n ~ p(x | f_θ(z_n))       likelihood of the decoder's output

    inside ``pyro.plate("data", N)``. It follows the story contract (README, "Write
    your own story"): β and KL warm-up are applied from outside by the engine.

    Args:
        prior: module returning p(z) (event shape ``[latent_dim]``).
        decoder: module mapping z ``[..., latent_dim]`` to ``[..., D]``.
        likelihood: module mapping that output to p(x | z) (event shape ``[D]``).
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def z_dist(self) -> dist.Distribution:
        """p(z)."""
        return self.prior()

    def x_dist(self, z: Tensor) -> dist.Distribution:
        """p(x | z) for z ``[..., latent_dim]``: event shape ``[D]``."""
        return self.likelihood(self.decoder(z))

    def forward(self, x: Tensor) -> Tensor:
        """Score images ``x`` of shape ``[N, D]``."""
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            return pyro.sample("x", self.x_dist(z), obs=x)
