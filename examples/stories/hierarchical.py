"""A story with two stochastic layers (Burda, Grosse & Salakhutdinov 2016): z₂ → z₁ → x.

For each image n:

.. code-block:: text

    z2_n ~ N(0, I_{d2})                      the coarse cause, d2 = z2_dim
    z1_n ~ N(μ_θ(z2_n), diag σ_θ(z2_n)²)     the finer cause, d1 = z1_dim; σ > floor
    x_n  ~ Bernoulli(sigmoid(f_θ(z1_n)))

The code the decoder reads, z₁, has a learned prior (a Gaussian whose mean and scale a
small network reads off z₂) instead of N(0, I), while z₂ stays small enough to plot.

The guide runs the other way, x → z₁ → z₂, as in the paper:

.. code-block:: text

    z1_n ~ q_φ(z1 | x_n)  = N(m_φ(x_n),  diag s_φ(x_n)²)
    z2_n ~ q_φ(z2 | z1_n) = N(m'_φ(z1_n), diag s'_φ(z1_n)²)

Train it with its own guide (the factory arguments are shared by story and guide)::

    pyro-vae train --model examples/stories/hierarchical.py:Hierarchical \\
        --guide examples/stories/hierarchical.py:HierarchicalGuide \\
        --model-arg z1_dim=8 --model-arg z2_dim=2 --epochs 200

or with ``--guide auto`` (the default), which reads both z₁ and z₂ off x alone.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

# Keeps every σ away from 0, where the Gaussian log-density and its gradients blow up.
SCALE_FLOOR = 1e-3


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, n_out))


def diagonal_normal(net: nn.Module, h: Tensor) -> dist.Distribution:
    """N(μ, diag σ²) with μ and σ (through softplus + floor) read off ``net(h)``: one vector
    per row, so the event is the last dimension."""
    loc, raw = net(h).chunk(2, dim=-1)
    return dist.Normal(loc, softplus(raw) + SCALE_FLOOR).to_event(1)


class Hierarchical(nn.Module):
    """The story z₂ → z₁ → x for images of ``data_dim`` pixels."""

    def __init__(self, data_dim: int, z1_dim: int = 8, z2_dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.z1_net = mlp(z2_dim, hidden, 2 * z1_dim)
        self.decoder = mlp(z1_dim, hidden, data_dim)
        self.register_buffer("zero", torch.zeros(z2_dim))

    def z2_dist(self) -> dist.Distribution:
        return dist.Normal(self.zero, 1.0).to_event(1)

    def z1_dist(self, z2: Tensor) -> dist.Distribution:
        return diagonal_normal(self.z1_net, z2)

    def x_dist(self, z1: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.decoder(z1)).to_event(1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.z2_dist())
            z1 = pyro.sample("z1", self.z1_dist(z2))
            pyro.sample("x", self.x_dist(z1), obs=x)


class HierarchicalGuide(nn.Module):
    """q(z₁ | x) q(z₂ | z₁): the guide of :class:`Hierarchical`, bottom up.

    Its arguments carry the story's names, so that ``--model-arg z1_dim=...`` reaches both.
    """

    def __init__(self, data_dim: int, z1_dim: int = 8, z2_dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.z1_net = mlp(data_dim, hidden, 2 * z1_dim)
        self.z2_net = mlp(z1_dim, hidden, 2 * z2_dim)

    def z1_dist(self, x: Tensor) -> dist.Distribution:
        return diagonal_normal(self.z1_net, x)

    def z2_dist(self, z1: Tensor) -> dist.Distribution:
        return diagonal_normal(self.z2_net, z1)

    def forward(self, x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.z1_dist(x))
            pyro.sample("z2", self.z2_dist(z1))
