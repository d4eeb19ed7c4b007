"""Should this fit be trusted? The true posterior by NUTS against the guide, the
inference gaps, posterior collapse and posterior predictive checks, for any story.

For N selected held-out points x_n, under the trained model, with z = (z_1, …, z_S)
all the story's latent sites (a 2-D code ``z`` and a positive ``ink``, say):

.. code-block:: text

    p(z | x_n) ∝ p(x_n, z)                  sampled by NUTS (several chains; r̂, ESS by ArviZ),
                                            constrained sites through their bijections
    q*_n = argmax_q ELBO(q; x_n)            a free Gaussian per point over the unconstrained
                                            coordinates of all sites (local SVI), the best
                                            member of the guide's family, started at q_φ(z | x_n)
    log p(x_n) ≥ ELBO(q*_n) ≥ ELBO(q_φ(· | x_n))
    log p(x_n) ≈ IWAE bound with a Student-t proposal matched to the NUTS draws

    approximation gap = log p(x) − ELBO(q*)       what the Gaussian family costs
    amortization gap  = ELBO(q*) − ELBO(q_φ)      what sharing one encoder costs

(Cremer, Li & Duvenaud 2018). Posterior collapse is read per site off
KL(q(z_s,d | x) ‖ p(z_s,d | parents)) per dimension and the active units of Burda et
al. (2016), Cov_x(E_q[u_s,d]) > 0.01 on the site's unconstrained coordinates u_s.
Posterior predictive checks draw x_rep ~ p(x | z), z ~ q(z | x), with Pyro's
``Predictive``, and compare them with the held-out data.

Everything is read off Pyro traces of ``model(x, **batch)`` and ``guide(x, **batch)``
(:mod:`pyro_vae.traces`): site names, supports and the observed image site; no model
method or site name is assumed.

The N points are independent given the model, so their posteriors form one product
distribution over all sites ``[N, ...]``: one NUTS run samples all of them at once (the
model is simply called on the N points), and its per-coordinate r̂ and ESS are the
per-point ones. The price is one shared step size and trajectory length; the diagonal
mass matrix still adapts per coordinate. Chains run one after another (Pyro would
otherwise fork one process per chain, which shared CPUs and CUDA do not suit).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyro
import torch
from torch import Tensor

from pyro_vae.diagnostics.collapse import Collapse, posterior_collapse
from pyro_vae.diagnostics.config import RHAT_OK, DiagnoseConfig, check_diagnose_config
from pyro_vae.diagnostics.discrete import (
    DiscreteSite,
    discrete_arrays,
    discrete_posteriors,
    discrete_result,
    discrete_sites,
)
from pyro_vae.diagnostics.draws import find_image_site, story_sites
from pyro_vae.diagnostics.gaps import Gaps, gap_chunk, inference_gaps
from pyro_vae.diagnostics.idata import inference_data
from pyro_vae.diagnostics.nuts import Convergence, NutsResult, convergence, run_nuts
from pyro_vae.diagnostics.posteriors import PosteriorProposal, fit_local
from pyro_vae.diagnostics.ppc import PredictiveCheck, predictive_check
from pyro_vae.diagnostics.stages import (
    collapse_arrays,
    collapse_result,
    fields_arrays,
    local_arrays,
    local_guide,
    nuts_arrays,
    nuts_result,
    run_stage,
)
from pyro_vae.memory import BudgetError, MemoryBudget, format_size, memory_budget
from pyro_vae.partial import Partial
from pyro_vae.programs import Batch, as_program, cuda_devices, unit_seed
from pyro_vae.traces import LatentSite, index_rows, slice_rows

# ---------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class Diagnostics:
    """Everything :func:`diagnose` measured; ``summary()`` is the JSON of it."""

    config: DiagnoseConfig
    indices: Tensor
    sites: tuple[LatentSite, ...]
    image_site: str
    nuts: NutsResult
    convergence: Convergence
    gaps: Gaps
    collapse: Collapse
    ppc: PredictiveCheck
    idata: Any
    seconds: dict[str, float]
    memory: dict[str, Any] | None = None
    """The gap table's chunk and the memory the stages hold (:func:`memory_plan`)."""
    discrete: tuple[DiscreteSite, ...] = ()
    """q(c | x) of each discrete latent site (summed out by the story or sampled by the
    guide) on the collapse stage's images; empty for a story without one."""

    def _draws(self, group: str) -> Tensor:
        """``[chains · draws, N, T]``: a group's draws of all sites, flattened per point."""
        n = len(self.indices)
        return torch.cat([torch.as_tensor(self.idata[group][s.name].values).reshape(-1, n, math.prod(
            s.event_shape)) for s in self.sites], dim=-1).double()

    def guide_vs_nuts(self) -> dict[str, float]:
        """How far the amortized and local guides sit from the NUTS posterior, in posterior
        SDs, averaged over every coordinate of every site and point."""
        z = self._draws("posterior")
        mean, sd = z.mean(0), z.std(0)
        out = {}
        for name in ("guide", "local_guide"):
            g = self._draws(name)
            out[f"{name}_mean_offset_sd"] = float(((g.mean(0) - mean).abs() / sd).mean())
            out[f"{name}_sd_ratio"] = float((g.std(0) / sd).mean())
        return out

    def summary(self) -> dict[str, Any]:
        return {"config": dict(vars(self.config)), "points": [int(i) for i in self.indices],
                "sites": {s.name: {"event_shape": list(s.event_shape), "support": str(s.support),
                                   "dim": s.size} for s in self.sites},
                "image_site": self.image_site, "nuts": self._nuts_summary(),
                "gaps": _gaps_summary(self.gaps), "collapse": _collapse_summary(self.collapse),
                "ppc": _ppc_summary(self.ppc), "seconds": self.seconds,
                **({} if self.memory is None else {"memory": self.memory}),
                "discrete": {site.name: site.summary() for site in self.discrete}}

    def _nuts_summary(self) -> dict[str, Any]:
        conv = self.convergence
        rhat = conv.all("rhat")
        per_site = {name: {"rhat_max": _finite_or_none(np.nanmax(conv.rhat[name])),
                           "ess_bulk_min": _finite_or_none(np.nanmin(conv.ess_bulk[name])),
                           "ess_tail_min": _finite_or_none(np.nanmin(conv.ess_tail[name]))}
                    for name in conv.rhat}
        return {"rhat_max": float(np.nanmax(rhat)),
                "fraction_rhat_above_1.01": float(np.mean(rhat > RHAT_OK)),
                "ess_bulk_min": float(np.nanmin(conv.all("ess_bulk"))),
                "ess_tail_min": float(np.nanmin(conv.all("ess_tail"))),
                "divergences": conv.divergences, "draws": math.prod(self.nuts.shape),
                **self.guide_vs_nuts(), "sites": per_site}


def _mean(t: Tensor) -> float:
    return float(t.double().mean())


def _sem(t: Tensor) -> float:
    return float(t.double().std() / math.sqrt(t.numel())) if t.numel() > 1 else 0.0


def _gaps_summary(g: Gaps) -> dict[str, Any]:
    per_point = {name: [_finite_or_none(v) for v in getattr(g, name)] for name in
                 ("log_px", "elbo_amortized", "elbo_local", "approximation", "amortization",
                  "khat_amortized", "khat_local", "khat_log_px", "log_px_se")}
    return {"log_px": _mean(g.log_px), "elbo_amortized": _mean(g.elbo_amortized),
            "elbo_local": _mean(g.elbo_local), "approximation_gap": _mean(g.approximation),
            "approximation_gap_se": _sem(g.approximation),
            "amortization_gap": _mean(g.amortization), "amortization_gap_se": _sem(g.amortization),
            "fraction_khat_amortized_above_0.7": _mean((g.khat_amortized > 0.7).float()),
            "fraction_khat_local_above_0.7": _mean((g.khat_local > 0.7).float()),
            "fraction_khat_log_px_above_0.7": _mean((g.khat_log_px > 0.7).float()),
            "per_point": per_point}


def _collapse_summary(c: Collapse) -> dict[str, Any]:
    """Totals over sites, each site's numbers, and (for readers of one-site summaries) the
    per-dimension lists of all sites concatenated in the story's order."""
    sites = {name: {"kl_per_dim": [_finite_or_none(v) for v in s.kl], "kl_total": s.kl_total,
                    "kl_analytic": s.analytic,
                    "mean_variance_per_dim": [float(v) for v in s.mean_variance],
                    "active_units": int(s.active.sum()), "dim": s.dim}
             for name, s in c.sites.items()}
    return {"kl_total": c.kl_total, "active_units": c.active_units, "latent_dim": c.latent_dim,
            "kl_analytic": all(s.analytic for s in c.sites.values()),
            "kl_per_dim": [v for s in sites.values() for v in s["kl_per_dim"]],
            "mean_variance_per_dim": [v for s in sites.values() for v in s["mean_variance_per_dim"]],
            "sites": sites}


def _ppc_summary(p: PredictiveCheck) -> dict[str, float]:
    return {"p_value": p.p_value, "loglik_data_mean": _mean(p.loglik_data),
            "loglik_rep_mean": _mean(p.loglik_rep),
            "pixel_mean_abs_diff": _mean((p.data_mean - p.rep_mean).abs()),
            "pixel_var_abs_diff": _mean((p.data_var - p.rep_var).abs())}


def _finite_or_none(value: Any) -> float | None:
    """JSON has no NaN: an unknown value is written as null."""
    v = float(value)
    return v if math.isfinite(v) else None


def select_points(n_available: int, n: int, seed: int) -> Tensor:
    """``n`` distinct row indices out of ``n_available``, by a seeded permutation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=gen)[:min(n, n_available)]


def memory_plan(model: Callable, guide: Callable, x: Tensor, fields: Batch, cfg: DiagnoseConfig,
                sites: tuple[LatentSite, ...], memory: MemoryBudget | None = None) -> dict[str, Any]:
    """What the stages hold for the N points ``x``: the NUTS draws (kept with the guides'
    draws for ArviZ, three sets of chains · samples · N · S float64) and one program call
    of the gap table, whose draws per call shrink to fit ``memory`` (its K is streamed).
    BudgetError when the draws alone exceed it."""
    memory = memory or memory_budget(x.device)
    draws = 3 * 8 * cfg.chains * cfg.samples * len(x) * sum(s.size for s in sites)
    if draws > memory.bytes:
        raise BudgetError(f"diagnose: {cfg.chains} chains × {cfg.samples} NUTS draws of "
                          f"{len(x)} points need about {format_size(draws)}, more than the "
                          f"memory budget of {memory}; choose fewer --points or --samples, or "
                          f"raise --memory-budget")
    gaps = gap_chunk(model, guide, x, fields,
                     MemoryBudget(memory.bytes - draws, memory.source))
    return {**memory.summary(), "nuts_draws_bytes": draws,
            "gap_particle_chunk": gaps["particle_chunk"],
            "gap_bytes_per_draw": gaps["bytes_per_draw"],
            "working_bytes_bound": draws + gaps["working_bytes_bound"]}


def diagnose(model: Callable, guide: Callable, heldout: Tensor, cfg: DiagnoseConfig = DiagnoseConfig(),
             progress: bool | None = False, batch: Batch | None = None,
             partial: Partial | None = None, labels: Tensor | None = None,
             memory: MemoryBudget | None = None) -> Diagnostics:
    """Run every diagnostic of a fitted story/guide pair on held-out images ``heldout``
    ``[M, D]``, whose per-row extras (labels ``y``) are ``batch`` ``{name: [M, ...]}``.

    NUTS, the local fit and the gap table use ``cfg.points`` rows chosen by
    :func:`select_points`; the collapse and predictive checks use the first
    ``cfg.collapse_points`` / ``cfg.ppc_points`` rows. Each stage (``stages.STAGES``) draws
    from its own seed, ``unit_seed(cfg.seed, stage)``; with ``partial`` each finished stage
    is kept there and read back instead of run again. ``progress``: bars for NUTS and the
    local fit (True), none (False), or only when stderr is a terminal (None). ``labels``
    ``[M]`` (the true labels of ``heldout``, when known) tabulate each discrete latent
    site's values against them. ``memory``: the budget the stages must fit (default the
    device's; see :func:`memory_plan`).
    """
    check_diagnose_config(cfg)
    model, guide, batch = as_program(model, "the story"), as_program(guide, "the guide"), dict(batch or {})
    progress = sys.stderr.isatty() if progress is None else progress
    seconds: dict[str, float] = {}
    device = heldout.device

    def stage(name: str, compute: Callable[[], Any], pack: Callable, unpack: Callable) -> Any:
        out, seconds[name] = run_stage(name, cfg.seed, partial, compute, pack, unpack, device)
        return out

    indices = select_points(len(heldout), cfg.points, cfg.seed)
    x, fields = heldout[indices.to(device)], index_rows(batch, indices.to(device))
    sites = story_sites(model, x, fields)
    plan = memory_plan(model, guide, x, fields, cfg, sites, memory)
    c, p = cfg.collapse_points, cfg.ppc_points
    nuts = stage("nuts", lambda: run_nuts(model, guide, x, cfg, progress, fields, sites),
                 lambda r: nuts_arrays(r, sites), lambda a: nuts_result(a, sites, device))
    local = stage("local_svi", lambda: fit_local(model, guide, x, cfg, progress, fields, sites),
                  local_arrays, lambda a: local_guide(a, sites, device))
    gaps = stage("gaps", lambda: inference_gaps(model, guide, local, x, cfg.elbo_samples,
                                                PosteriorProposal(sites, nuts.z), fields,
                                                particle_chunk=plan["gap_particle_chunk"]),
                 fields_arrays, lambda a: Gaps(**{k: torch.as_tensor(v) for k, v in a.items()}))
    collapse = stage("collapse", lambda: posterior_collapse(model, guide, heldout[:c],
                                                            slice_rows(batch, 0, c),
                                                            cfg.collapse_draws, sites),
                     lambda r: collapse_arrays(r, sites), lambda a: collapse_result(a, sites))
    ppc = stage("ppc", lambda: predictive_check(model, guide, heldout[:p], slice_rows(batch, 0, p),
                                                sites),
                fields_arrays,
                lambda a: PredictiveCheck(**{k: torch.as_tensor(v) for k, v in a.items()}))
    found = discrete_sites(model, guide, x[:2], slice_rows(fields, 0, 2))
    head, head_labels = heldout[:c], None if labels is None else labels[:c]
    discrete = () if not found else tuple(stage(
        "discrete", lambda: discrete_posteriors(model, guide, head, slice_rows(batch, 0, c),
                                                cfg.collapse_draws, head_labels, found),
        discrete_arrays, lambda a: discrete_result(a, found, head, head_labels)))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=cuda_devices(heldout)):
        pyro.set_rng_seed(unit_seed(cfg.seed, "inference_data"))
        idata = inference_data(model, guide, local, x, indices, nuts, fields, sites)
    seconds["inference_data"] = time.perf_counter() - start
    return Diagnostics(cfg, indices, sites, find_image_site(model, x, fields), nuts,
                       convergence(idata), gaps, collapse, ppc, idata, seconds, plan,
                       discrete)
