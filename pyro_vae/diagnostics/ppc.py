"""Posterior predictive checks: x_rep ~ p(x | z), z ~ q(z | x), against held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro import poutine
from pyro.infer import Predictive
from torch import Tensor

from pyro_vae.diagnostics.draws import draw_latents, find_image_site, site_log_prob, story_sites
from pyro_vae.programs import Batch, as_program
from pyro_vae.traces import LatentSite, slice_rows, trace_program


@dataclass(frozen=True)
class PredictiveCheck:
    """Held-out x ``[M, D]`` against replicates x_rep ~ p(x | z), z ~ q(z | x).

    Pixel maps ``[D]``: mean and variance over points of the data and of the
    replicates. ``loglik_data``/``loglik_rep`` ``[M]``: log p(x | z) and
    log p(x_rep | z) at the same z.
    """

    data_mean: Tensor
    data_var: Tensor
    rep_mean: Tensor
    rep_var: Tensor
    loglik_data: Tensor
    loglik_rep: Tensor

    @property
    def p_value(self) -> float:
        """Posterior predictive p-value P(log p(x_rep | z) ≤ log p(x | z)); near 0 or 1 is a misfit."""
        return float((self.loglik_rep <= self.loglik_data).double().mean())


@torch.no_grad()
def predictive_check(model: Callable, guide: Callable, x: Tensor, batch: Batch | None = None,
                     sites: Sequence[LatentSite] | None = None) -> PredictiveCheck:
    """Replicates of ``x`` ``[M, D]`` (per-row extras ``batch``) by Pyro's ``Predictive`` at one
    guide draw of every latent per point, scored by the image site of the model conditioned
    on those latents."""
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    sites = sites or story_sites(model, x[:2], slice_rows(batch, 0, 2))
    latents = draw_latents(model, guide, x, batch, 1, sites)  # {name: [1, M, ...]}
    image = find_image_site(model, x, batch)
    # Unconditioned, the image site is sampled instead of scoring x: x_rep ~ p(x | z).
    predictive = Predictive(poutine.uncondition(model), posterior_samples=latents,
                            return_sites=[image])
    x_rep = predictive(x, **batch)[image][0]
    z = {name: value[0] for name, value in latents.items()}
    node = trace_program(poutine.condition(model, data=z), x, batch).nodes[image]
    return PredictiveCheck(x.mean(0).cpu(), x.var(0).cpu(), x_rep.mean(0).cpu(),
                           x_rep.var(0).cpu(), site_log_prob(node, x, 1).cpu(),
                           site_log_prob(node, x_rep, 1).cpu())
