"""Stories in which the digit's label is part of the generative process (labels ``y``
arrive as a per-row keyword, as the story contract says).

Both take the built-in parts as values: a decoder (z, or z beside the label's one-hot
code, to the likelihood's parameters) and a likelihood.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot, softplus

from pyro_vae.models.networks import inverse_softplus


class LabelPrior(nn.Module):
    """One region of latent space per class, for each image n with label y_n:

    .. code-block:: text

        z_n ~ N(μ_{y_n}, diag σ_{y_n}²)     μ_k, σ_k learned for each of K classes
        x_n ~ p(x | f_θ(z_n))

    "One distribution per digit", made literal; the likelihood scores log p(x | y).

    Args:
        decoder: ``[..., latent_dim]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z) with event shape ``[D]``.
        classes: K; labels must lie in 0..K−1.
    """

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, latent_dim: int,
                 classes: int = 10, floor: float = 1e-3) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood
        self.classes, self.floor = classes, floor
        # Means start spread like N(0, I) draws so that the classes begin apart.
        self.locs = nn.Parameter(torch.randn(classes, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((classes, latent_dim),
                                                  inverse_softplus(1.0 - floor)))

    def z_dist(self, y: Tensor) -> dist.Distribution:
        """p(z | y) for labels ``y`` ``[N]``: batch ``[N]``, event ``[latent_dim]``."""
        scale = softplus(self.raw_scales[y]) + self.floor
        return dist.Normal(self.locs[y], scale, validate_args=False).to_event(1)

    def x_dist(self, z: Tensor) -> dist.Distribution:
        return self.likelihood(self.decoder(z))

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist(y))
            pyro.sample("x", self.x_dist(z), obs=x)


class ConditionalVAE(nn.Module):
    """The conditional VAE, for each image n with label y_n:

    .. code-block:: text

        z_n ~ N(0, I)                       style, whatever the label leaves open
        x_n ~ p(x | f_θ(z_n, y_n))          the decoder sees z beside y's one-hot code

    Args:
        decoder: ``[..., latent_dim + K]`` → ``[..., D]``.
        likelihood: decoder output → p(x | z, y) with event shape ``[D]``.
    """

    def __init__(self, decoder: nn.Module, likelihood: nn.Module, latent_dim: int,
                 classes: int = 10) -> None:
        super().__init__()
        self.decoder, self.likelihood = decoder, likelihood
        self.classes = classes
        self.register_buffer("loc", torch.zeros(latent_dim))

    def z_dist(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0, validate_args=False).to_event(1)

    def x_dist(self, z: Tensor, y: Tensor) -> dist.Distribution:
        """p(x | z, y) for z ``[..., N, d]`` and labels ``[N]``."""
        code = one_hot(y, self.classes).to(z.dtype).expand(z.shape[:-1] + (self.classes,))
        return self.likelihood(self.decoder(torch.cat([z, code], dim=-1)))

    def forward(self, x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist().expand([x.shape[0]]))
            pyro.sample("x", self.x_dist(z, y), obs=x)
