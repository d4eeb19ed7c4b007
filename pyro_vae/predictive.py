"""Draws from a story for figures and ``pyro-vae sample``, by running it under handlers.

Like Pyro's ``Predictive``, these run the program itself (``uncondition``, ``condition``,
``replay``, ``trace``), so they serve any story whatever its sites are called:

.. code-block:: text

    prior predictive     z ~ p(z), x ~ p(x | z)              uncondition(model)
    fixed latents        z_s = v_s, the rest ~ p, x ~ p(x|z)   condition(uncondition(model), v)
    reconstruction       z = E_q[z | x], then p(x | z)          condition(model, guide means)
"""

from __future__ import annotations

from typing import Callable

import torch
from pyro import poutine
from torch import Tensor

from pyro_vae.programs import Batch
from pyro_vae.traces import image_site, is_latent, trace_program


def site_mean(site: dict) -> Tensor:
    """The mean of a traced site's distribution where it has one in closed form (the mode
    of a discrete site, whose mean is no value), else its value."""
    fn = site["fn"]
    try:
        mean = fn.mode if fn.support.is_discrete else fn.mean
    except NotImplementedError:
        return site["value"]
    return mean if mean.shape == site["value"].shape else site["value"]


def image_mean(site: dict) -> Tensor:
    """E[x] of the image site's distribution (its value where there is no closed form). Not
    :func:`site_mean`: a Bernoulli's support is discrete, and its mode would show the grey
    means σ(logits) as black and white."""
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        return site["value"]
    return mean if mean.shape == site["value"].shape else site["value"]


def mean_latents(guide: Callable, x: Tensor, batch: Batch | None = None) -> dict[str, Tensor]:
    """E_q[z_s | x] for every latent site s of the guide (a draw where q has no closed-form
    mean), each ``[N, *event_shape]``. Discrete sites take their most probable value, and
    the continuous ones are then read given those values (q(z | x, y) of M2 at y's mode)."""
    trace = trace_program(guide, x, batch)
    modes = {name: site_mean(site) for name, site in trace.nodes.items()
             if is_latent(site) and site["fn"].support.is_discrete}
    if modes:
        trace = trace_program(poutine.condition(guide, data=modes), x, batch)
    return {name: site_mean(site) if name not in modes else modes[name]
            for name, site in trace.nodes.items() if name in modes or is_latent(site)}


@torch.no_grad()
def prior_predictive(model: Callable, template: Tensor, batch: Batch | None = None,
                     fixed: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Run the story with its observations released: latents from the prior (those in
    ``fixed`` held at the given values), then the image site drawn.

    Args:
        template: ``[N, ...]`` rows shaped like the data (their values are not read).
        fixed: site name → value ``[N, *event_shape]`` (or broadcastable to it).

    Returns:
        the image site's mean ``[N, ...]`` and a draw from it ``[N, ...]``.
    """
    # uncondition innermost: it releases the observations, then condition holds the fixed latents.
    program = poutine.condition(poutine.uncondition(model), data=fixed or {})
    trace = trace_program(program, template, batch)
    site = trace.nodes[image_site(trace, template)]
    return image_mean(site), site["value"]


@torch.no_grad()
def reconstruct(model: Callable, guide: Callable, x: Tensor, batch: Batch | None = None) -> Tensor:
    """The image site's mean under the story with its latents at E_q[z | x]: ``[N, ...]``."""
    latents = mean_latents(guide, x, batch)
    trace = trace_program(poutine.condition(model, data=latents), x, batch)
    return image_mean(trace.nodes[image_site(trace, x)])
