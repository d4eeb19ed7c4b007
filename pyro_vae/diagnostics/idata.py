"""The diagnostics as ArviZ InferenceData: NUTS draws, guide draws and log-likelihoods.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pyro_vae.diagnostics.draws import draw_latents, find_image_site, image_log_prob, story_sites
from pyro_vae.diagnostics.nuts import NutsResult
from pyro_vae.diagnostics.posteriors import JointGuide
from pyro_vae.programs import Batch, as_program
from pyro_vae.traces import LatentSite


def site_dims(site: LatentSite) -> list[str]:
    """Named ArviZ dimensions of one site's event: ``z_dim`` for a vector site ``z``,
    ``z_dim_0, z_dim_1, …`` for a higher-order one, none for a scalar one."""
    if len(site.event_shape) == 1:
        return [f"{site.name}_dim"]
    return [f"{site.name}_dim_{i}" for i in range(len(site.event_shape))]


def _coords(sites: Sequence[LatentSite], indices: Tensor, x: Tensor
            ) -> tuple[dict[str, np.ndarray], dict[str, list[str]], list[str]]:
    """ArviZ coordinates, the dims of every site's variable, and the dims of one data row."""
    coords = {"point": indices.cpu().numpy()}
    dims = {}
    for s in sites:
        names = site_dims(s)
        coords.update({d: np.arange(n) for d, n in zip(names, s.event_shape)})
        dims[s.name] = ["point", *names]
    data_dims = ["pixel"] if x.dim() == 2 else [f"pixel_{i}" for i in range(x.dim() - 1)]
    coords.update({d: np.arange(n) for d, n in zip(data_dims, x.shape[1:])})
    return coords, dims, data_dims


def _as_chains(draws: Mapping[str, Tensor], chains: int) -> dict[str, np.ndarray]:
    """``{name: [chains · draws, N, ...]}`` → numpy ``[chains, draws, N, ...]``."""
    return {name: v.reshape(chains, -1, *v.shape[1:]).cpu().numpy() for name, v in draws.items()}


@torch.no_grad()
def inference_data(model: Callable, guide: Callable, local: JointGuide, x: Tensor,
                   indices: Tensor, nuts: NutsResult, batch: Batch | None = None,
                   sites: Sequence[LatentSite] | None = None) -> Any:
    """ArviZ InferenceData for the N points ``x`` ``[N, D]`` (per-row extras ``batch``).

    Groups: ``posterior`` (NUTS draws, one variable per latent site, dims chain, draw,
    point, ``<site>_dim``…), ``guide`` and ``local_guide`` (as many independent draws from
    q_φ(z | x) and from the local optimum), ``log_likelihood`` (log p(x_n | z) at each
    NUTS draw, named after the image site), ``sample_stats`` (divergences) and
    ``observed_data`` (x, named after the image site).
    """
    import arviz as az

    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    sites = sites or story_sites(model, x, batch)
    image = find_image_site(model, x, batch)
    chains, draws = nuts.shape
    coords, dims, data_dims = _coords(sites, indices, x)
    flat = {name: v.to(x.device).flatten(0, 1) for name, v in nuts.z.items()}
    loglik = image_log_prob(model, x, batch, flat, image)
    idata = az.from_dict(posterior=_as_chains(flat, chains),
                         log_likelihood={image: loglik.reshape(chains, draws, -1).cpu().numpy()},
                         sample_stats={"diverging": nuts.diverging.numpy()}, coords=coords,
                         dims={**dims, image: ["point"]})
    extra = {name: az.dict_to_dataset(
                 _as_chains(draw_latents(model, q, x, batch, chains * draws, sites), chains),
                 coords=coords, dims=dims)
             for name, q in (("guide", guide), ("local_guide", local))}
    extra["observed_data"] = az.dict_to_dataset({image: x.cpu().numpy()}, coords=coords,
                                                dims={image: ["point", *data_dims]}, default_dims=[])
    idata.add_groups(extra)
    return idata
