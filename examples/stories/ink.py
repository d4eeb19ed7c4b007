"""A story with a positive latent beside the code: how much ink a digit is written with.

For each image n:

.. code-block:: text

    z_n   ~ N(0, I_d)                       what is drawn (style and identity), d = latent_dim
    ink_n ~ LogNormal(0, 0.5)               how boldly: a positive per-image factor
    x_n   ~ Bernoulli(sigmoid(ink_n · f_θ(z_n)))

A larger ``ink`` pushes every logit away from 0, so strokes come out darker and the
background cleaner; the decoder f_θ only has to say where the strokes go.

Train it (the guide is built automatically, one amortized Gaussian per latent site,
``ink`` through exp)::

    pyro-vae train --model examples/stories/ink.py:InkStory --model-arg latent_dim=4 --epochs 200
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn


class InkStory(nn.Module):
    """The ink story for images of ``data_dim`` pixels (``image_shape`` is not needed)."""

    def __init__(self, data_dim: int, latent_dim: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(),
                                     nn.Linear(hidden, data_dim))
        self.register_buffer("zero", torch.zeros(latent_dim))

    def z_dist(self) -> dist.Distribution:
        return dist.Normal(self.zero, 1.0).to_event(1)

    def ink_dist(self) -> dist.Distribution:
        return dist.LogNormal(self.zero.new_zeros(()), 0.5)

    def x_dist(self, z: Tensor, ink: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=ink.unsqueeze(-1) * self.decoder(z)).to_event(1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist())
            ink = pyro.sample("ink", self.ink_dist())
            pyro.sample("x", self.x_dist(z, ink), obs=x)
