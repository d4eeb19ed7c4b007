"""An automatic amortized guide: q_φ(z_s | x) for every latent site s of a model,
found by tracing the model once.

Pyro's autoguides (``AutoNormal``, ``AutoDiagonalNormal``...) keep one set of
parameters per data point; this guide instead reads every local latent off an
encoder body, so that it serves any batch, new data included.
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
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from pyro_vae.guides.amortized import DiagonalNormalHead

DATA_PLATE = "data"


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site of the model: its event shape and support, and the shape
    of the unconstrained space its bijector starts from (``[K-1]`` for a K-simplex)."""

    name: str
    event_shape: torch.Size
    support: constraints.Constraint
    unconstrained_shape: torch.Size

    @property
    def size(self) -> int:
        """Number of unconstrained coordinates per data point."""
        return math.prod(self.unconstrained_shape)


def _is_real(support: constraints.Constraint) -> bool:
    """Whether ``support`` is ℝ (possibly as ``independent(real, k)``): no bijector needed."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _latent_site(name: str, site: dict, n: int) -> LatentSite:
    """Check that a traced sample site is a continuous latent local to the data plate
    (batch shape exactly ``[n]``) and describe it; raise ``ValueError`` naming it otherwise."""
    fn = site["fn"]
    in_plate = any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"])
    if not in_plate or tuple(fn.batch_shape) != (n,):
        raise ValueError(f"latent site {name!r} has batch shape {list(fn.batch_shape)} "
                         f"{'inside' if in_plate else 'outside'} the {DATA_PLATE!r} plate; "
                         f"AutoAmortizedGuide needs every latent local to that plate, with "
                         f"batch shape [{n}] (one value per row of x): global latents cannot "
                         f"be amortized")
    support = fn.support
    if support.is_discrete:
        raise ValueError(f"latent site {name!r} is discrete; AutoAmortizedGuide only handles "
                         f"continuous latents (enumerate discrete ones out of the model)")
    extra = len(fn.event_shape) - support.event_dim
    if extra > 0:  # e.g. an elementwise support on a site made with .to_event()
        support = constraints.independent(support, extra)
    unconstrained = torch.Size(biject_to(support).inverse_shape(fn.event_shape))
    return LatentSite(name, fn.event_shape, support, unconstrained)


def latent_sites(model: Callable, x: Tensor, *args: Any, **kwargs: Any) -> list[LatentSite]:
    """The non-observed sample sites of one run of ``model(x, *args, **kwargs)``, in order.

    The run is hidden from outer handlers, does no autograd and leaves Pyro's
    parameter store as it was.
    """
    with torch.no_grad(), pyro.get_param_store().scope():
        trace = poutine.block(poutine.trace(model).get_trace)(x, *args, **kwargs)
    return [_latent_site(name, site, x.shape[0]) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


class AutoAmortizedGuide(nn.Module):
    """q_φ(z_s | x_n) for every latent site s of ``model``, all read off one encoder body:

    .. code-block:: text

        h_n   = encoder(x_n)                               [H]
        u_s,n ~ N(μ_s(h_n), diag σ_s(h_n)²)                 [size_s], σ = softplus(·) + floor
        z_s,n = T_s(reshape(u_s,n))                         T_s = biject_to(support of s)

    inside ``pyro.plate("data", N)``, each site scaled by ``beta`` with
    ``poutine.scale`` as the model does, and reparameterized. The sites are
    found by tracing ``model(x_example, *args, **kwargs)`` once at construction;
    every one must be local to the ``"data"`` plate (batch shape ``[N]``), and a
    global latent is refused with a ``ValueError`` naming it.

    Called as ``guide(x, beta=1.0, *args, **kwargs)``, the project's one
    signature; further arguments of the model are accepted and ignored.

    Not in the ``GUIDES`` registry: registry builders get ``(cfg, encoder)`` and
    run before the model exists (a VampPrior needs its guide first), while this
    guide needs the model to trace. It is a Python-API value::

        model, _ = build_vae(cfg, data_dim)
        guide = AutoAmortizedGuide(model, MLPEncoder(data_dim, (256,)), x[:8])

    Args:
        model: a Pyro program ``model(x, *args, **kwargs)`` with x ``[N, ...]``.
        encoder: module mapping x ``[N, ...]`` to features ``[N, H]``; has ``.out_features`` = H.
        x_example: a batch to trace the model on (two rows or more, so that the
            data dimension cannot be mistaken for a size-1 dimension).
        floor: lower bound of every σ.
    """

    scores_any_z = True

    def __init__(self, model: Callable, encoder: nn.Module, x_example: Tensor, *args: Any,
                 floor: float = 1e-3, **kwargs: Any) -> None:
        super().__init__()
        self.sites = latent_sites(model, x_example, *args, **kwargs)
        if not self.sites:
            raise ValueError("the model has no latent sample site to guide")
        self.encoder = encoder
        # A list, not a ModuleDict: site names may hold dots, which module names may not.
        self.heads = nn.ModuleList([DiagonalNormalHead(encoder.out_features, s.size, floor)
                                    for s in self.sites])

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def site_dists(self, x: Tensor) -> dict[str, dist.Distribution]:
        """q(z_s | x) per site for x ``[N, ...]``: batch shape ``[N]``, event shape the site's."""
        h = self.encoder(x)
        return {s.name: _constrain(head(h), s) for s, head in zip(self.sites, self.heads)}

    def z_dist(self, x: Tensor) -> dist.Distribution:
        """q(z | x) of a model with a single latent site: batch ``[N]``, event the site's."""
        if len(self.sites) != 1:
            raise ValueError(f"z_dist needs a model with one latent site; this one has "
                             f"{self.site_names}: use site_dists(x)")
        return self.site_dists(x)[self.sites[0].name]

    def forward(self, x: Tensor, beta: float = 1.0, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample every latent site for x ``[N, ...]``; returns the draws by site name."""
        with pyro.plate(DATA_PLATE, x.shape[0]), poutine.scale(scale=beta):
            return {name: pyro.sample(name, q) for name, q in self.site_dists(x).items()}


def _constrain(base: dist.Distribution, site: LatentSite) -> dist.Distribution:
    """Carry a Normal of event ``[size]`` to the site: reshaped to its unconstrained shape,
    then pushed through ``biject_to(support)``. A real vector site keeps the Normal itself
    (the same law, with a closed-form mean for figures)."""
    transforms: list = []
    if site.unconstrained_shape != (site.size,):
        transforms.append(dist.transforms.ReshapeTransform((site.size,), site.unconstrained_shape))
    if not _is_real(site.support):
        transforms.append(biject_to(site.support))
    if not transforms:
        return base
    return dist.TransformedDistribution(base, transforms, validate_args=False)
