"""Reading a story from its Pyro traces: its latent and observed sites, their supports,
and the helpers that several estimators share.

Everything downstream of a fit (evaluate, diagnose, figures, sample) finds what it
needs here, from a trace of the program, never from a model's methods or site names.
Like Pyro's ``infer/util.py`` this is a leaf: it imports nothing else of pyro-vae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints

from pyro_vae.deprecated import MOVED_NAMES, forwarder

DATA_PLATE = "data"


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K Σ_k exp(log_w_k)) along ``dim``, stably."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def is_latent(site: dict) -> bool:
    """A sample site that is neither observed nor a plate's subsample index."""
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def is_observed(site: dict) -> bool:
    return site["type"] == "sample" and site["is_observed"]


def is_real(support: constraints.Constraint) -> bool:
    """Whether ``support`` is ℝ (possibly as ``independent(real, k)``): no bijector needed."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site of a story: its event shape and support, and the shape
    of the unconstrained space its bijector starts from (``[K-1]`` for a K-simplex)."""

    name: str
    event_shape: torch.Size
    support: constraints.Constraint
    unconstrained_shape: torch.Size

    @property
    def size(self) -> int:
        """Number of unconstrained coordinates per data point."""
        return math.prod(self.unconstrained_shape)

    @property
    def transform(self) -> dist.transforms.Transform:
        """Unconstrained ``[..., *unconstrained_shape]`` → the site's support."""
        return biject_to(self.support)

    def unconstrain(self, value: Tensor) -> Tensor:
        """Site values ``[..., *event_shape]`` → flat unconstrained ``[..., size]``."""
        u = self.transform.inv(value)
        return u.reshape(u.shape[:u.dim() - len(self.unconstrained_shape)] + (self.size,))

    def constrain(self, u: Tensor) -> Tensor:
        """Flat unconstrained ``[..., size]`` → site values ``[..., *event_shape]``."""
        return self.transform(u.reshape(u.shape[:-1] + self.unconstrained_shape))


def check_local(name: str, site: dict, n: int, who: str = "this guide") -> None:
    """A latent site must sit in the data plate with batch shape exactly ``[n]`` (one value
    per row of x); raise ``ValueError`` naming it otherwise."""
    fn = site["fn"]
    in_plate = any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])
    if not in_plate or tuple(fn.batch_shape) != (n,):
        raise ValueError(f"latent site {name!r} has batch shape {list(fn.batch_shape)} "
                         f"{'inside' if in_plate else 'outside'} the {DATA_PLATE!r} plate; "
                         f"{who} needs every latent local to that plate, with batch shape "
                         f"[{n}] (one value per row of x): global latents cannot be amortized")


def describe_latent(name: str, site: dict, n: int, who: str = "this guide") -> LatentSite:
    """Check that a traced sample site is a continuous latent local to the data plate
    (batch shape exactly ``[n]``) and describe it; raise ``ValueError`` naming it otherwise."""
    check_local(name, site, n, who)
    fn = site["fn"]
    support = fn.support
    # A mixture lives on its components' support (torch's wrapper has no bijection).
    while isinstance(support, constraints.MixtureSameFamilyConstraint):
        support = support.base_constraint
    if support.is_discrete:
        if is_enumerated(site):
            raise ValueError(f"latent site {name!r} is discrete and marked for enumeration; "
                             f"{who} handles continuous latents only and cannot sum it out")
        raise ValueError(f"latent site {name!r} is discrete and not marked for enumeration; "
                         f"{who} handles continuous latents only. Mark it where it is drawn, "
                         f"pyro.sample({name!r}, ..., infer={{'enumerate': 'parallel'}}), and "
                         f"it is summed out exactly (the default objective then trains with "
                         f"enum, and the auto guide guides the continuous sites)")
    extra = len(fn.event_shape) - support.event_dim
    if extra > 0:  # e.g. an elementwise support on a site made with .to_event()
        support = constraints.independent(support, extra)
    unconstrained = torch.Size(biject_to(support).inverse_shape(fn.event_shape))
    return LatentSite(name, fn.event_shape, support, unconstrained)


def row_bounds(support: constraints.Constraint) -> list[str]:
    """The bounds of ``support`` that are tensors of more than one value (``interval(low,
    high)`` built from per-row numbers, say), as ``"name [shape]"``: a support that moves
    with the row, which one bijection fitted once cannot follow."""
    while isinstance(support, (constraints.independent, constraints.MixtureSameFamilyConstraint)):
        support = support.base_constraint
    return [f"{name} {list(value.shape)}" for name, value in vars(support).items()
            if isinstance(value, Tensor) and value.numel() > 1]


def trace_program(program: Callable, x: Tensor, batch: dict[str, Any] | None = None
                  ) -> poutine.Trace:
    """One run of ``program(x, **batch)``, hidden from outer handlers, without autograd;
    Pyro's global parameter store is left as it was."""
    with torch.no_grad(), pyro.get_param_store().scope():
        return poutine.block(poutine.trace(program).get_trace)(x, **(batch or {}))


def latent_sites(model: Callable, x: Tensor, batch: dict[str, Any] | None = None,
                 who: str = "this guide", enumerated: bool = True) -> list[LatentSite]:
    """The continuous latent sample sites of one run of ``model(x, **batch)``, in order (see
    :func:`describe_latent` for what is refused). Discrete sites marked for enumeration are
    summed out wherever they are used, so they are not listed; with ``enumerated=False``
    they are refused too (by a ``who`` that must propose every latent)."""
    trace = trace_program(model, x, batch)
    return [describe_latent(name, site, x.shape[0], who) for name, site in trace.nodes.items()
            if is_latent(site) and not (enumerated and is_enumerated(site))]


def support_probs(fn) -> Tensor:
    """A discrete distribution's probabilities ``[N, K]`` over its support, for batch ``[N]``."""
    values = fn.enumerate_support(expand=False)  # [K, 1, ...]
    return fn.log_prob(values).exp().transpose(0, 1)


def is_enumerated(site: dict) -> bool:
    """A latent site marked ``infer={"enumerate": "parallel"}``: summed over its values."""
    return is_latent(site) and site.get("infer", {}).get("enumerate") == "parallel"


def observed_names(trace: poutine.Trace) -> list[str]:
    return [name for name, site in trace.nodes.items() if is_observed(site)]


def image_site(trace: poutine.Trace, x: Tensor) -> str:
    """The observed site that scores the data ``x`` itself (the story's ``obs=x``), also
    when ``poutine.uncondition`` has released it (its observation kept in ``infer``)."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        obs = site["value"] if site["is_observed"] else site["infer"].get("obs")
        if obs is not None and (obs is x or (obs.shape == x.shape and bool(torch.equal(obs, x)))):
            return name
    raise ValueError(f"the story has no observed site with obs=x (observed sites: "
                     f"{observed_names(trace)}); a story must score its data x with "
                     f"pyro.sample(name, distribution, obs=x)")


def constrain(base: dist.Distribution, site: LatentSite) -> dist.Distribution:
    """Carry a distribution of event ``[size]`` to the site: reshaped to its unconstrained
    shape, then pushed through ``biject_to(support)``. A real vector site keeps the
    distribution itself (the same law, with a closed-form mean for figures)."""
    transforms: list = []
    if site.unconstrained_shape != (site.size,):
        transforms.append(dist.transforms.ReshapeTransform((site.size,), site.unconstrained_shape))
    if not is_real(site.support):
        transforms.append(biject_to(site.support))
    if not transforms:
        return base
    return dist.TransformedDistribution(base, transforms, validate_args=False)


def slice_rows(batch: dict[str, Tensor], lo: int, hi: int) -> dict[str, Tensor]:
    """Rows ``lo:hi`` of every per-row field."""
    return {k: v[lo:hi] for k, v in batch.items()}


def index_rows(batch: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Rows ``index`` of every per-row field."""
    return {k: v[index] for k, v in batch.items()}


def particle_plate(k: int, max_plate_nesting: int = 1) -> pyro.plate:
    """A plate of ``k`` vectorized draws, outside the story's own plates."""
    return pyro.plate("_particles", k, dim=-(max_plate_nesting + 1))


# Names that left this module in 0.2, kept for one release (pyro_vae/deprecated.py).
__getattr__ = forwarder(__name__, MOVED_NAMES[__name__])
