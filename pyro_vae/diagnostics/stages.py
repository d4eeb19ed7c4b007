"""The stages of :func:`~pyro_vae.diagnostics.diagnose` as units that can be kept on disk
(:class:`pyro_vae.partial.Partial`): each stage's result as named arrays and back.

.. code-block:: text

    nuts        the NUTS draws per site and the divergences
    local_svi   the per-point Gaussian's parameters
    gaps        the per-point log p(x), ELBOs, standard errors and k̂
    collapse    per site: KL per dimension and in all, Var_x E_q[u], whether exact
    ppc         the pixel maps and log-likelihoods of data and replicates
    discrete    q(c | x) per image of each discrete latent site (stories that have one)

:func:`run_stage` runs one from its own seed (:func:`pyro_vae.programs.unit_seed` of the
diagnosis's seed and the stage's name), or reads it back, and hands on the arrays either
way, so a continued diagnosis has exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import pyro
import torch
from torch import Tensor

from pyro_vae.diagnostics.collapse import Collapse, SiteCollapse
from pyro_vae.diagnostics.nuts import NutsResult
from pyro_vae.diagnostics.posteriors import LocalGaussian
from pyro_vae.partial import Arrays, Partial, as_arrays
from pyro_vae.programs import cuda_devices, unit_seed
from pyro_vae.traces import LatentSite

STAGES = ("nuts", "local_svi", "gaps", "collapse", "ppc", "discrete")


def _tensor(a: Any, device: torch.device | None = None) -> Tensor:
    return torch.as_tensor(a, device=device)


def nuts_arrays(r: NutsResult, sites: Sequence[LatentSite]) -> dict[str, Any]:
    return {**{f"z{i}": r.z[s.name] for i, s in enumerate(sites)}, "diverging": r.diverging,
            "seconds": r.seconds}


def nuts_result(a: Arrays, sites: Sequence[LatentSite], device: torch.device) -> NutsResult:
    return NutsResult({s.name: _tensor(a[f"z{i}"], device) for i, s in enumerate(sites)},
                      _tensor(a["diverging"]), float(a["seconds"]))


def local_arrays(local: LocalGaussian) -> dict[str, Any]:
    return dict(local.state_dict())


def local_guide(a: Arrays, sites: Sequence[LatentSite], device: torch.device) -> LocalGaussian:
    """The fitted :class:`LocalGaussian` from its parameters (a site's block is full-rank
    where its mask has an entry, as it was built)."""
    state = {name: _tensor(value, device) for name, value in a.items()}
    mask, full, lo = state["mask"], [], 0
    for s in sites:
        full.append(bool(mask[lo:lo + s.size, lo:lo + s.size].any()))
        lo += s.size
    loc = state["loc"]
    local = LocalGaussian(sites, loc, torch.diag_embed(torch.ones_like(loc)), full)
    local.load_state_dict(state)
    return local


def fields_arrays(result: Any) -> dict[str, Any]:
    """The tensor fields of a dataclass (``Gaps``, ``PredictiveCheck``)."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def collapse_arrays(c: Collapse, sites: Sequence[LatentSite]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, s in enumerate(sites):
        site = c.sites[s.name]
        out |= {f"{i}_kl": site.kl, f"{i}_kl_total": site.kl_total,
                f"{i}_mean_variance": site.mean_variance, f"{i}_analytic": site.analytic}
    return out


def collapse_result(a: Arrays, sites: Sequence[LatentSite]) -> Collapse:
    return Collapse({s.name: SiteCollapse(_tensor(a[f"{i}_kl"]), float(a[f"{i}_kl_total"]),
                                          _tensor(a[f"{i}_mean_variance"]),
                                          bool(a[f"{i}_analytic"]))
                     for i, s in enumerate(sites)})


def run_stage(name: str, seed: int, partial: Partial | None, compute: Callable[[], Any],
              pack: Callable[[Any], dict[str, Any]], unpack: Callable[[Arrays], Any],
              device: torch.device) -> tuple[Any, float]:
    """Stage ``name``'s result and the seconds it took (when it was computed): read back
    from ``partial``, else computed from ``unit_seed(seed, name)`` (the caller's random
    state left as it was) and kept there."""
    saved = partial.load(name) if partial is not None else None
    if saved is None:
        with torch.random.fork_rng(devices=cuda_devices(device)):
            pyro.set_rng_seed(unit_seed(seed, name))
            start = time.perf_counter()
            arrays = {**pack(compute()), "stage_seconds": time.perf_counter() - start}
        saved = partial.save(name, arrays) if partial is not None else as_arrays(arrays)
    seconds = float(saved.pop("stage_seconds"))
    return unpack(saved), seconds

