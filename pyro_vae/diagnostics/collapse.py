"""Posterior collapse per latent site: KL(q(z_d | x) ‖ p(z_d | parents)) per dimension and
in all, and the active units of Burda et al. (2016), Cov_x(E_q[u_d]) > 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import (
    Independent,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    kl_divergence,
)
from torch.distributions.transforms import IndependentTransform

from pyro_vae.diagnostics.config import ACTIVE_THRESHOLD, PARTICLE_BUDGET
from pyro_vae.diagnostics.draws import replayed_traces, story_sites
from pyro_vae.programs import Batch, as_program
from pyro_vae.traces import LatentSite, is_real, slice_rows


@dataclass(frozen=True)
class SiteCollapse:
    """One latent site, per unconstrained dimension ``[size]``: KL(q(z_d | x) ‖ p(z_d | parents))
    averaged over x (NaN where a marginal is unknown), Cov_x(E_q[u_d]), and whether the
    dimension is active (that variance above ``ACTIVE_THRESHOLD``); ``kl_total`` is
    KL(q(z_s | x) ‖ p(z_s | parents)) averaged over x; ``analytic`` whether the per-dimension
    KLs are exact (else Monte Carlo or unknown)."""

    kl: Tensor
    kl_total: float
    mean_variance: Tensor
    analytic: bool

    @property
    def active(self) -> Tensor:
        return self.mean_variance > ACTIVE_THRESHOLD

    @property
    def dim(self) -> int:
        return int(self.mean_variance.numel())


@dataclass(frozen=True)
class Collapse:
    """Posterior collapse per latent site (in the story's order)."""

    sites: dict[str, SiteCollapse]

    @property
    def kl_total(self) -> float:
        """Σ_s KL(q(z_s | x) ‖ p(z_s | parents)) averaged over x (one guide draw of the parents
        per term: a Monte Carlo estimate of KL(q(z | x) ‖ p(z)) for a hierarchical story)."""
        return float(sum(c.kl_total for c in self.sites.values()))

    @property
    def active_units(self) -> int:
        return int(sum(int(c.active.sum()) for c in self.sites.values()))

    @property
    def latent_dim(self) -> int:
        return sum(c.dim for c in self.sites.values())


def _flatten_event(t: Tensor, event_dims: int) -> Tensor:
    """``[..., *event]`` → ``[..., numel(event)]`` (a scalar event becomes ``[..., 1]``)."""
    return t.reshape(t.shape[:t.dim() - event_dims] + (-1,))


def _elementwise(t: dist.transforms.Transform) -> dist.transforms.Transform | None:
    """The transform acting on each coordinate alone, when ``t`` is one (else None)."""
    inner = t.base_transform if isinstance(t, IndependentTransform) else t
    return inner if inner.domain.event_dim == 0 and inner.codomain.event_dim == 0 else None


def _marginals(d: dist.Distribution) -> dist.Distribution | None:
    """The one-dimensional marginals of d as one distribution of batch shape ``[..., *event]``,
    where they are known: scalar sites, factorized distributions, multivariate Normals, and
    factorized ones pushed through elementwise bijections (a positive site's guide)."""
    if not d.event_shape:
        return d
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == len(d.event_shape):
        return d.base_dist
    if isinstance(d, MultivariateNormal):
        return dist.Normal(d.loc, d.variance.sqrt())
    if isinstance(d, TransformedDistribution):
        inner = [_elementwise(t) for t in d.transforms]
        base = _marginals(d.base_dist)
        if base is not None and all(t is not None for t in inner) \
                and base.batch_shape == d.batch_shape + d.event_shape:
            return TransformedDistribution(base, inner, validate_args=False)
    return None


def kl_per_dimension(q: dist.Distribution, p: dist.Distribution, draws: int = 64) -> tuple[Tensor, bool]:
    """KL(q(z_d) ‖ p(z_d)) between one-dimensional marginals, ``[*batch, numel(event)]``, and
    whether it is exact. q and p may shape the same coordinates differently (an event
    ``[1]`` against a scalar one): the coordinates are read flat, in order.

    Analytic for Normal marginals; a Monte Carlo estimate from ``draws`` draws of q for
    other known marginals; NaN where a marginal density is unknown (flows, mixtures).
    """
    qm, pm = _marginals(q), _marginals(p)
    q_flat = lambda t: _flatten_event(t, len(q.event_shape))  # noqa: E731
    p_flat = lambda t: _flatten_event(t, len(p.event_shape))  # noqa: E731
    if isinstance(qm, Normal) and isinstance(pm, Normal):
        return kl_divergence(Normal(q_flat(qm.loc), q_flat(qm.scale)),
                             Normal(p_flat(pm.loc), p_flat(pm.scale))), True
    if qm is None or pm is None:
        return torch.full(q.batch_shape + (math.prod(q.event_shape),), float("nan")), False
    z = q.sample((draws,))  # [draws, *batch, *event of q]
    z_p = z.reshape(z.shape[:z.dim() - len(q.event_shape)] + p.event_shape)
    return (q_flat(qm.log_prob(z)) - p_flat(pm.log_prob(z_p))).mean(0), False


def kl_total(q: dist.Distribution, p: dist.Distribution, draws: int = 64) -> Tensor:
    """KL(q ‖ p) ``[*batch]``: analytic where torch knows it, else Monte Carlo."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((draws,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


def _closed_mean(d: dist.Distribution) -> Tensor | None:
    try:
        return d.mean
    except (NotImplementedError, RuntimeError):
        return None


def _base_is_unconstrained(q: TransformedDistribution, value: Tensor, site: LatentSite) -> bool:
    """Whether q is a distribution on the site's unconstrained space pushed through the
    site's own bijection (as the automatic guide builds it): the draw mapped back through
    q's transforms must be the draw's unconstrained coordinates."""
    back = value
    for t in reversed(q.transforms):
        back = t.inv(back)
    back, u = _flatten_event(back, len(q.base_dist.event_shape)), site.unconstrain(value)
    return back.shape == u.shape and bool(torch.allclose(back, u, rtol=1e-4, atol=1e-5))


def on_unconstrained(d: dist.Distribution, value: Tensor, site: LatentSite
                     ) -> dist.Distribution | None:
    """d as a distribution of the site's unconstrained coordinates, where it is one: d itself
    on ℝ, the base of d when d is a base pushed through the site's own bijection (the
    automatic guide's q, a LogNormal's p); else None. ``value`` is a draw to check that on."""
    if is_real(site.support):
        return d
    if isinstance(d, TransformedDistribution) and _base_is_unconstrained(d, value, site):
        return d.base_dist
    return None


def _unconstrained_mean(q: dist.Distribution, value: Tensor, site: LatentSite) -> Tensor:
    """E_q[u_s] ``[..., size]`` at the drawn parents, for a draw ``value`` ``[..., *event]``:
    in closed form where q's mean in unconstrained coordinates is known, else the draw's own
    coordinates (then the mean over draws is a Monte Carlo one)."""
    on_u = on_unconstrained(q, value, site)
    mean = None if on_u is None else _closed_mean(on_u)
    if mean is None:
        return site.unconstrain(value)
    batch = value.shape[:value.dim() - len(site.event_shape)]
    return _flatten_event(mean, len(on_u.event_shape)).expand(batch + (site.size,))


def _factorized(d: dist.Distribution) -> bool:
    """Whether d is a product of its one-dimensional marginals (by construction)."""
    return not d.event_shape or (isinstance(d, Independent)
                                 and d.reinterpreted_batch_ndims == len(d.event_shape))


def _site_kl(q: dist.Distribution, p: dist.Distribution, value: Tensor, site: LatentSite
             ) -> tuple[Tensor, Tensor, bool]:
    """KL per dimension ``[k, n, size]`` (and whether exact) and in all ``[k, n]`` of one
    site, with one Monte Carlo draw per guide draw where there is no closed form. KL is
    the same in any coordinates, so both sides are read on the unconstrained ones where
    they can be (a positive site's Normals in log space have a closed form)."""
    q_u, p_u = on_unconstrained(q, value, site), on_unconstrained(p, value, site)
    if q_u is None or p_u is None:
        q_u, p_u = q, p
    kl, exact = kl_per_dimension(q_u, p_u, draws=1)
    if kl.shape[-1] != site.size:  # e.g. a simplex: K marginals over K − 1 coordinates
        kl, exact = torch.full(kl.shape[:-1] + (site.size,), float("nan")), False
    if exact and _factorized(q_u) and _factorized(p_u):  # the KL of a product is the sum
        total = kl.sum(-1)
    elif q_u.event_shape == p_u.event_shape:
        total = kl_total(q_u, p_u, draws=1)
    else:
        total = kl_total(q, p, draws=1)
    return kl.to(value.device), total, exact


def _site_terms(q: dist.Distribution | None, p: dist.Distribution, value: Tensor,
                site: LatentSite) -> tuple[Tensor, Tensor, Tensor, bool]:
    """For draws ``value`` ``[k, n, *event]`` of one site, with the guide's q and the model's
    p (both batch ``[k, n]``, at the same drawn parents), averaged over the k draws: KL per
    dimension ``[n, size]``, KL ``[n]``, E_q[u] ``[n, size]``, and whether the KLs per
    dimension are exact."""
    if q is None:  # the guide leaves the site to the model: q is p, no KL at all
        zeros = torch.zeros(value.shape[1], device=value.device)
        return (zeros[:, None].expand(-1, site.size), zeros,
                _unconstrained_mean(p, value, site).mean(0), True)
    kl, total, exact = _site_kl(q, p, value, site)
    return kl.mean(0), total.mean(0), _unconstrained_mean(q, value, site).mean(0), exact


def _site_collapse(terms: list[tuple[Tensor, Tensor, Tensor, bool]]) -> SiteCollapse:
    """One site's :class:`SiteCollapse` from its per-chunk terms (see :func:`_site_terms`)."""
    kl, total, mean = (torch.cat([t[i] for t in terms]).double().cpu() for i in range(3))
    return SiteCollapse(kl.mean(0).float(), float(total.mean()), mean.var(0).float(),
                        all(t[3] for t in terms))


@torch.no_grad()
def posterior_collapse(model: Callable, guide: Callable, x: Tensor, batch: Batch | None = None,
                       draws: int = 32, sites: Sequence[LatentSite] | None = None) -> Collapse:
    """KL per dimension and in all, and the variance over data of E_q[u_s,d | x], per latent
    site, for ``x`` ``[N, D]`` (per-row extras ``batch``).

    Each site's p(z_s | parents) is read off the model's trace replayed against ``draws``
    guide draws per point, so the parents of a hierarchical story (z₂ → z₁) are the
    guide's; the KLs and means are averaged over those draws.
    """
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    sites = sites or story_sites(model, x[:2], slice_rows(batch, 0, 2))
    terms: dict[str, list] = {s.name: [] for s in sites}
    step = max(1, PARTICLE_BUDGET // draws)
    for lo in range(0, x.shape[0], step):
        rows, fields = x[lo:lo + step], slice_rows(batch, lo, lo + step)
        guide_trace, model_trace = replayed_traces(model, guide, rows, fields, draws)
        for s in sites:
            q = guide_trace.nodes[s.name]["fn"] if s.name in guide_trace.nodes else None
            node = model_trace.nodes[s.name]
            terms[s.name].append(_site_terms(q, node["fn"], node["value"], s))
    return Collapse({s.name: _site_collapse(terms[s.name]) for s in sites})
