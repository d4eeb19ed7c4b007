"""An automatic amortized guide: q_φ(z_s | x) for every latent site s of a model,
found by tracing the model once.

Pyro's autoguides (``AutoNormal``, ``AutoDiagonalNormal``...) keep one set of
parameters per data point; this guide instead reads every local latent off an
encoder body, so that it serves any batch, new data included.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.guides.amortized import DiagonalNormalHead
from pyro_vae.traces import DATA_PLATE, LatentSite, constrain, latent_sites, row_bounds

__all__ = ["AutoAmortizedGuide", "LatentSite", "latent_sites"]


class AutoAmortizedGuide(nn.Module):
    """q_φ(z_s | x_n) for every latent site s of ``model``, all read off one encoder body:

    .. code-block:: text

        h_n   = encoder(x_n)                               [H]
        u_s,n ~ N(μ_s(h_n), diag σ_s(h_n)²)                 [size_s], σ = softplus(·) + floor
        z_s,n = T_s(reshape(u_s,n))                         T_s = biject_to(support of s)

    inside ``pyro.plate("data", N)``, reparameterized. The sites are found by
    tracing ``model(x_example, **batch)`` once at construction; every one must be
    local to the ``"data"`` plate (batch shape ``[N]``) and continuous; a global or
    discrete latent is refused with a ``ValueError`` naming it, except a discrete site the
    model marks ``infer={"enumerate": "parallel"}``: ``TraceEnum_ELBO`` sums it out of the
    model, so the guide proposes only the continuous sites.

    Called as ``guide(x, **batch)``, the story contract's signature; per-row
    extras of the model are accepted and not read (q depends on x alone).

    Not in the ``GUIDES`` registry: registry builders get ``(cfg, encoder)`` and
    run before the model exists (a VampPrior needs its guide first), while this
    guide needs the model to trace. It is a Python-API value::

        model, _ = build_vae(cfg, data_dim)
        guide = AutoAmortizedGuide(model, MLPEncoder(data_dim, (256,)), x[:8])

    Args:
        model: a Pyro program ``model(x, **batch)`` with x ``[N, ...]``.
        encoder: module mapping x ``[N, ...]`` to features ``[N, H]``; has ``.out_features`` = H.
        x_example: a batch to trace the model on (two rows or more, so that the
            data dimension cannot be mistaken for a size-1 dimension).
        batch: per-row extras for the model's trace (e.g. ``y=labels[:8]``).
        floor: lower bound of every σ.
    """

    scores_any_z = True

    def __init__(self, model: Callable, encoder: nn.Module, x_example: Tensor, *,
                 floor: float = 1e-3, **batch: Any) -> None:
        super().__init__()
        self.sites = latent_sites(model, x_example, batch, who="AutoAmortizedGuide")
        if not self.sites:
            raise ValueError("the model has no latent sample site to guide")
        for site in self.sites:
            if bounds := row_bounds(site.support):
                raise ValueError(
                    f"latent site {site.name!r}: its support's bounds are numbers per row "
                    f"({', '.join(bounds)}), e.g. a Uniform whose low and "
                    f"high come from the data; AutoAmortizedGuide maps onto one fixed support, "
                    f"so give the story a guide of its own, or draw it with fixed bounds")
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
        return {s.name: constrain(head(h), s) for s, head in zip(self.sites, self.heads)}

    def z_dist(self, x: Tensor) -> dist.Distribution:
        """q(z | x) of a model with a single latent site: batch ``[N]``, event the site's."""
        if len(self.sites) != 1:
            raise ValueError(f"z_dist needs a model with one latent site; this one has "
                             f"{self.site_names}: use site_dists(x)")
        return self.site_dists(x)[self.sites[0].name]

    def forward(self, x: Tensor, **batch: Any) -> dict[str, Tensor]:
        """Sample every latent site for x ``[N, ...]``; returns the draws by site name."""
        with pyro.plate(DATA_PLATE, x.shape[0]):
            return {name: pyro.sample(name, q) for name, q in self.site_dists(x).items()}

