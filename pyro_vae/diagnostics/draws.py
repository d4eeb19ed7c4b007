"""Draws and log-densities read off traces of any story: joint draws of every latent site
from the guide, log p(x | z) at given latents, the story's sites and its image site.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch import Tensor

from pyro_vae.diagnostics.config import PARTICLE_BUDGET
from pyro_vae.evaluation import particle_traces
from pyro_vae.programs import Batch
from pyro_vae.traces import LatentSite, image_site, latent_sites, trace_program


def particle_chunks(k: int, n: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of the particle chunks that keep each call near ``PARTICLE_BUDGET``."""
    step = max(1, PARTICLE_BUDGET // max(n, 1))
    for lo in range(0, k, step):
        yield lo, min(step, k - lo)


def replayed_traces(model: Callable, guide: Callable, x: Tensor, batch: Batch, k: int
                     ) -> tuple[poutine.Trace, poutine.Trace]:
    """Guide trace with ``k`` draws per point and the model's trace replayed against it
    (the evaluator's :func:`~pyro_vae.evaluation.particle_traces`), hidden from outer handlers."""
    model_trace, guide_trace = poutine.block(particle_traces)(model, guide, x, k,
                                                              kwargs=dict(batch))
    return guide_trace, model_trace


@torch.no_grad()
def draw_latents(model: Callable, guide: Callable, x: Tensor, batch: Batch, k: int,
                 sites: Sequence[LatentSite]) -> dict[str, Tensor]:
    """``k`` joint draws per point of every latent site from the guide (then the model for
    sites the guide leaves out): ``{name: [k, N, *event_shape]}``."""
    parts: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    for _, size in particle_chunks(k, x.shape[0]):
        _, model_trace = replayed_traces(model, guide, x, batch, size)
        for s in sites:
            parts[s.name].append(model_trace.nodes[s.name]["value"])
    return {name: torch.cat(values) for name, values in parts.items()}


def site_log_prob(site: dict, value: Tensor, batch_dims: int) -> Tensor:
    """log density of ``value`` under a traced site's distribution, summed down to
    ``batch_dims`` leading dimensions (``[N]`` or ``[k, N]``)."""
    lp = site["fn"].log_prob(value)
    return sum_rightmost(lp, lp.dim() - batch_dims)


@torch.no_grad()
def image_log_prob(model: Callable, x: Tensor, batch: Batch, latents: Mapping[str, Tensor],
                   image: str) -> Tensor:
    """log p(x_n | z_k) ``[k, N]`` of the image site at given latents ``{name: [k, N, ...]}``,
    from traces of the model conditioned on them."""
    k = next(iter(latents.values())).shape[0]
    out = []
    for lo, size in particle_chunks(k, x.shape[0]):
        part = {name: value[lo:lo + size] for name, value in latents.items()}
        trace, _ = poutine.block(particle_traces)(poutine.condition(model, data=part), None, x,
                                                  size, kwargs=dict(batch))
        out.append(site_log_prob(trace.nodes[image], x, 2))
    return torch.cat(out)


def story_sites(model: Callable, x: Tensor, batch: Batch | None = None) -> tuple[LatentSite, ...]:
    """The latent sites of one run of ``model(x, **batch)``, in order
    (:func:`pyro_vae.traces.latent_sites`)."""
    return tuple(latent_sites(model, x, dict(batch or {}), who="diagnose"))


def find_image_site(model: Callable, x: Tensor, batch: Batch) -> str:
    """The name of the observed site that scores ``x`` itself."""
    return image_site(trace_program(model, x, batch), x)
