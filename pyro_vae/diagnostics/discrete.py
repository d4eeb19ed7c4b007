"""Discrete latent sites: which value each image takes, and how sure the fit is of it.

For a discrete site c of a story (a mixture component that picks a decoder, a digit
class), the fit's belief about an image x is

.. code-block:: text

    q(c = k | x) = q_φ(c = k | x)                     where the guide samples c itself
    q(c = k | x) = E_{z ~ q_φ(z | x)} p(c = k | x, z)  where the story sums c out by
                                                       enumeration (the guide has no c)

The second is Pyro's ``TraceEnum_ELBO.compute_marginals`` (the exact posterior over c
given one guide draw of the continuous sites), averaged over draws. Read per site: the
``[N, K]`` table itself, the share of images whose most probable value is k (which
component, or decoder, explains them), the mean probability and entropy, and where the
images have labels, values against labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from pyro_vae.programs import Batch
from pyro_vae.traces import (
    is_enumerated,
    is_latent,
    slice_rows,
    support_probs,
    trace_program,
)

ROWS = 2048
"""Images per program call."""


@dataclass(frozen=True)
class DiscreteSite:
    """One discrete latent site's q(c | x) on N images.

    ``source``: ``"guide"`` (the guide's own q(c | x)) or ``"story"`` (summed out by the
    story; E_q p(c | x, z)). ``probs`` ``[N, K]``, rows summing to one, for the images
    ``images`` ``[N, D]``; ``labels`` ``[N]`` their labels where the data has them."""

    name: str
    source: str
    probs: Tensor
    images: Tensor | None = None
    labels: Tensor | None = None

    def examples(self, k: int, n: int = 8) -> Tensor:
        """Row indices of up to ``n`` images whose most probable value is k, surest first."""
        rows = torch.nonzero(self.probs.argmax(-1) == k).flatten()
        return rows[self.probs[rows, k].argsort(descending=True)[:n]]

    @property
    def values(self) -> int:
        return self.probs.shape[-1]

    def share(self) -> Tensor:
        """``[K]``: the share of images whose most probable value is k."""
        return torch.bincount(self.probs.argmax(-1), minlength=self.values).double() / len(self.probs)

    def entropy(self) -> float:
        """The mean entropy of q(c | x) over the images, in nats (0: every image sure)."""
        p = self.probs.double().clamp_min(1e-300)
        return float(-(p * p.log()).sum(-1).mean())

    def by_label(self) -> np.ndarray | None:
        """Counts ``[L, K]``: images of label l (rows) whose most probable value is k."""
        if self.labels is None:
            return None
        labels = self.labels.long().cpu()
        k, n_labels = self.values, int(labels.max()) + 1
        flat = labels * k + self.probs.argmax(-1).cpu()
        return torch.bincount(flat, minlength=n_labels * k).reshape(n_labels, k).numpy()

    def summary(self) -> dict:
        table = self.by_label()
        return {"source": self.source, "values": self.values,
                "share_per_value": [float(v) for v in self.share()],
                "mean_probability_per_value": [float(v) for v in self.probs.double().mean(0)],
                "mean_entropy": self.entropy(), "max_entropy": math.log(self.values),
                "points": len(self.probs),
                "by_label": None if table is None else table.tolist()}


def discrete_sites(model: Callable, guide: Callable, x: Tensor, batch: Batch) -> dict[str, str]:
    """``{name: source}`` of the discrete latent sites: those the guide samples, then those
    the story marks for enumeration that the guide leaves to it."""
    guide_trace, model_trace = trace_program(guide, x, batch), trace_program(model, x, batch)
    found = {name: "guide" for name, site in guide_trace.nodes.items()
             if is_latent(site) and site["fn"].support.is_discrete}
    found |= {name: "story" for name, site in model_trace.nodes.items()
              if is_enumerated(site) and name not in found}
    return found


@torch.no_grad()
def _guide_probs(guide: Callable, x: Tensor, batch: Batch, name: str, draws: int) -> Tensor:
    """The guide's q(c | x) ``[n, K]``, averaged over draws of what it samples before c."""
    return sum(support_probs(trace_program(guide, x, batch).nodes[name]["fn"])
               for _ in range(draws)) / draws


def _story_probs(model: Callable, guide: Callable, x: Tensor, batch: Batch, name: str,
                 draws: int) -> Tensor:
    """E_q p(c | x, z) ``[n, K]``: the exact posterior over c per guide draw, averaged."""
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    total = 0
    with torch.no_grad(), pyro.get_param_store().scope():
        for _ in range(draws):
            total = total + support_probs(elbo.compute_marginals(model, guide, x, **batch)[name])
    return total / draws


def discrete_posteriors(model: Callable, guide: Callable, x: Tensor, batch: Batch,
                        draws: int, labels: Tensor | None = None,
                        found: dict[str, str] | None = None) -> list[DiscreteSite]:
    """q(c | x) of every discrete latent site for the images ``x`` ``[N, D]`` (per-row
    extras ``batch``), from ``draws`` guide draws each; ``[]`` for a story without one.
    ``found``: :func:`discrete_sites`'s answer, where the caller has it already."""
    if found is None:
        found = discrete_sites(model, guide, x[:2], slice_rows(batch, 0, 2))
    out = []
    for name, source in found.items():
        parts = []
        for lo in range(0, len(x), ROWS):
            rows, fields = x[lo:lo + ROWS], slice_rows(batch, lo, lo + ROWS)
            parts.append(_guide_probs(guide, rows, fields, name, draws) if source == "guide"
                         else _story_probs(model, guide, rows, fields, name, draws))
        probs = torch.cat(parts).detach().float()
        out.append(DiscreteSite(name, source, probs / probs.sum(-1, keepdim=True), x, labels))
    return out


def discrete_arrays(found: Sequence[DiscreteSite]) -> dict[str, Tensor]:
    return {f"{i}_probs": s.probs for i, s in enumerate(found)}


def discrete_result(arrays: dict, found: dict[str, str], images: Tensor,
                    labels: Tensor | None) -> list[DiscreteSite]:
    return [DiscreteSite(name, source, torch.as_tensor(arrays[f"{i}_probs"]), images, labels)
            for i, (name, source) in enumerate(found.items())]
