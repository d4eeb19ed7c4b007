"""The true posterior p(z | x_n) of every latent site by NUTS, with ArviZ's r̂ and ESS.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor

from pyro_vae.diagnostics.config import DiagnoseConfig
from pyro_vae.diagnostics.draws import draw_latents, story_sites
from pyro_vae.programs import Batch, as_program, frozen
from pyro_vae.traces import LatentSite, is_real


@dataclass(frozen=True)
class NutsResult:
    """Draws from p(z | x_n) per latent site: ``z[name]`` ``[chains, draws, N, *event_shape]``;
    ``diverging`` ``[chains, draws]``."""

    z: dict[str, Tensor]
    diverging: Tensor
    seconds: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(chains, draws)``."""
        return tuple(self.diverging.shape)  # type: ignore[return-value]


def nuts_transforms(sites: Sequence[LatentSite]) -> dict[str, dist.transforms.Transform]:
    """Pyro's HMC transforms (constrained → unconstrained) for every site. Sites on ℝ get
    the identity, which spares Pyro from deriving a bijection from the support (it cannot
    for a mixture prior's); the others ``biject_to(support).inv``. Given a dict, Pyro
    derives none itself, so every site is in it."""
    return {s.name: (dist.transforms.identity_transform if is_real(s.support) else s.transform.inv)
            for s in sites}


def _nuts_chain(model: Callable, x: Tensor, batch: Batch, start: dict[str, Tensor],
                sites: Sequence[LatentSite], cfg: DiagnoseConfig, progress: bool
                ) -> tuple[dict[str, Tensor], Tensor]:
    """One chain from ``start`` (values per site ``[N, ...]``): draws per site and divergences."""
    kernel = NUTS(model, max_plate_nesting=1, max_tree_depth=cfg.max_tree_depth,
                  jit_compile=cfg.jit, ignore_jit_warnings=True, target_accept_prob=0.8,
                  transforms=nuts_transforms(sites), init_strategy=init_to_value(values=start))
    mcmc = MCMC(kernel, num_samples=cfg.samples, warmup_steps=cfg.warmup,
                disable_progbar=not progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
        mcmc.run(x, **batch)
    flags = torch.zeros(cfg.samples, dtype=torch.bool)
    flags[mcmc.diagnostics()["divergences"]["chain 0"]] = True
    samples = mcmc.get_samples()
    return {s.name: samples[s.name].detach() for s in sites}, flags


def run_nuts(model: Callable, guide: Callable, x: Tensor, cfg: DiagnoseConfig,
             progress: bool = False, batch: Batch | None = None,
             sites: Sequence[LatentSite] | None = None) -> NutsResult:
    """Sample p(z | x_n), all latent sites, for every row of ``x`` ``[N, D]`` (per-row extras
    ``batch``) in one product-space NUTS run per chain.

    Each chain starts at its own draw from the amortized guide, so that chains
    which disagree (r̂ > 1) reveal posteriors the guide misses.
    """
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    sites = sites or story_sites(model, x, batch)
    start = time.perf_counter()
    draws: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    divergent = []
    # The guide too: a VampPrior reads the guide's encoder.
    with frozen(model, guide):
        starts = draw_latents(model, guide, x, batch, cfg.chains, sites)
        for chain in range(cfg.chains):
            pyro.set_rng_seed(cfg.seed + 1000 * chain)
            values = {name: v[chain] for name, v in starts.items()}
            chain_draws, flags = _nuts_chain(model, x, batch, values, sites, cfg, progress)
            for name, v in chain_draws.items():
                draws[name].append(v)
            divergent.append(flags)
    return NutsResult({name: torch.stack(v) for name, v in draws.items()}, torch.stack(divergent),
                      time.perf_counter() - start)


@dataclass(frozen=True)
class Convergence:
    """ArviZ's r̂ and bulk/tail ESS of each NUTS coordinate, per site ``{name: [N, *event]}``,
    and the divergence count."""

    rhat: dict[str, np.ndarray]
    ess_bulk: dict[str, np.ndarray]
    ess_tail: dict[str, np.ndarray]
    divergences: int

    def all(self, stat: str) -> np.ndarray:
        """``stat`` (``rhat``, ``ess_bulk``, ``ess_tail``) of every coordinate of every site, flat."""
        return np.concatenate([v.ravel() for v in getattr(self, stat).values()])

    def worst_rhat_per_point(self) -> np.ndarray:
        """``[N]``: the largest r̂ over all coordinates of all sites of each point."""
        per_site = [v.reshape(v.shape[0], -1) for v in self.rhat.values()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN point stays NaN
            return np.nanmax(np.concatenate(per_site, axis=1), axis=1)


def convergence(idata: Any) -> Convergence:
    """r̂ and ESS of every posterior variable (latent site) of ``idata``."""
    import arviz as az

    post = idata.posterior
    names = list(post.data_vars)
    stats = [az.rhat(post), az.ess(post, method="bulk"), az.ess(post, method="tail")]
    return Convergence(*({n: s[n].values for n in names} for s in stats),
                       int(idata.sample_stats.diverging.values.sum()))
