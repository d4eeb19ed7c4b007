"""Guides that read the label beside the image: q_φ(z | x, y)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot


class ConditionalGuide(nn.Module):
    """q_φ(z_n | x_n, y_n) = head(encoder([x_n, onehot(y_n)])), inside ``pyro.plate("data", N)``.

    Args:
        encoder: ``[..., D + K]`` → features ``[..., H]`` (``out_features`` = H).
        head: features → a distribution over z (e.g. :class:`DiagonalNormalHead`).
        classes: K.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder, self.head, self.classes = encoder, head, classes

    def z_dist(self, x: Tensor, y: Tensor) -> dist.Distribution:
        """q(z | x, y) for x ``[N, D]``, y ``[N]``: batch ``[N]``, event ``[latent_dim]``."""
        code = one_hot(y, self.classes).to(x.dtype)
        return self.head(self.encoder(torch.cat([x, code], dim=-1)))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.z_dist(x, y))
