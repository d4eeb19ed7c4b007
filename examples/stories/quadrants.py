"""Complete a digit from part of it: a conditional VAE whose condition is an image part
(the task of Sohn, Lee & Yan 2015, as in Pyro's ``examples/cvae``).

For each image n, split into its observed quadrants o_n and hidden quadrants h_n:

.. code-block:: text

    z_n ~ N(μ_ψ(o_n), diag σ_ψ(o_n)²)      a prior network: the completions o_n leaves open
    h_n ~ Bernoulli(f_θ(z_n, o_n))         the hidden pixels only; o_n is given, not scored

so the story's log p(x) is log p(h | o), the log-likelihood of the completion, and
``pyro-vae evaluate`` reports it (its negative is the NLL a deterministic network that
maps o to h is compared with: ``benchmarks/quadrants_mnist.py``). The observed part is read
from x itself, so the story needs no extra per-row field: it is the story contract's x.
The quadrants are taken in reading order: ``observed=1`` shows the top-left quadrant,
``2`` the top half, ``3`` all but the bottom-right quadrant.

The image site's mean copies o_n and fills h_n with f_θ's probabilities, so prior samples
(``pyro-vae sample``, ``prior_samples.png``) are completions of the test images' parts.

Train it (the guide q(z | x) is built automatically; it sees the whole image)::

    pyro-vae train --model examples/stories/quadrants.py:Quadrants --model-arg observed=1
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn


def hidden_pixels(image_shape: tuple[int, ...], observed: int) -> Tensor:
    """A flat bool mask ``[C·H·W]``, True on the pixels of the quadrants not observed
    (quadrants in reading order; the first ``observed`` are shown)."""
    if observed not in (1, 2, 3):
        raise ValueError(f"observed: the number of quadrants shown must be 1, 2 or 3, got {observed}")
    h, w = image_shape[-2:]
    rows, cols = torch.arange(h)[:, None] >= (h + 1) // 2, torch.arange(w)[None, :] >= (w + 1) // 2
    quadrant = rows.long() * 2 + cols.long()                     # 0 TL, 1 TR, 2 BL, 3 BR
    return (quadrant >= observed).expand(image_shape).reshape(-1)


class Quadrants(nn.Module):
    """The completion story for images of ``image_shape`` (``[H, W]`` or ``[C, H, W]``)."""

    def __init__(self, data_dim: int, image_shape: tuple[int, ...], observed: int = 1,
                 latent_dim: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("hidden", hidden_pixels(tuple(image_shape), observed))
        act = nn.Softplus
        self.prior_net = nn.Sequential(nn.Linear(data_dim, hidden), act(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + data_dim, hidden), act(),
                                     nn.Linear(hidden, data_dim))

    def part(self, x: Tensor) -> Tensor:
        """o: x ``[..., D]`` with its hidden pixels set to 0 (what the networks may read)."""
        return x.masked_fill(self.hidden, 0.0)

    def z_dist(self, x: Tensor) -> dist.Distribution:
        """p(z | o): batch ``[N]``, event ``[latent_dim]``."""
        loc, raw = self.prior_net(self.part(x)).chunk(2, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3, validate_args=False).to_event(1)

    def x_dist(self, z: Tensor, x: Tensor) -> dist.Distribution:
        """p(h | z, o) on the hidden pixels; the mean copies o on the others. z ``[..., N, d]``."""
        o = self.part(x).expand(z.shape[:-1] + x.shape[-1:])
        probs = torch.sigmoid(self.decoder(torch.cat([z, o], dim=-1))).clamp(1e-6, 1 - 1e-6)
        probs = torch.where(self.hidden, probs, x)  # o copied: masked out of the score
        return dist.Bernoulli(probs=probs, validate_args=False).mask(self.hidden).to_event(1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.z_dist(x))
            pyro.sample("x", self.x_dist(z, x), obs=x)
