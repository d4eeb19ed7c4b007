"""Per-point distributions over all latent sites at once: the local Gaussian fitted by SVI
(the best member of the guide's family) and the Student-t proposal matched to NUTS draws.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer import Trace_ELBO
from torch import Tensor, nn
from torch.distributions import MultivariateNormal
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from pyro_vae.diagnostics.config import DiagnoseConfig
from pyro_vae.diagnostics.draws import draw_latents, story_sites
from pyro_vae.models import inverse_softplus
from pyro_vae.programs import Batch, as_program, frozen
from pyro_vae.traces import DATA_PLATE, LatentSite, is_real, trace_program


class JointGuide(nn.Module):
    """A Pyro guide with one distribution per point over the concatenated unconstrained
    coordinates u ``[N, T]`` of all latent sites (T = Σ_s size_s), carried to each site
    through its bijection T_s (Pyro's ``AutoContinuous`` construction):

    .. code-block:: text

        u_n ~ joint()                                   auxiliary site, batch [N], event [T]
        z_s,n = T_s(u_s,n)                              a Delta site per latent site
        log q(z_n) = log q(u_n) − Σ_s log |det ∂z_s/∂u_s|

    Called as ``guide(x, **batch)``; x must be the N points it was built for (row n of
    x is scored against row n of the parameters). Subclasses give :meth:`joint`.
    """

    AUXILIARY = "_diagnose_unconstrained"

    def __init__(self, sites: Sequence[LatentSite]) -> None:
        super().__init__()
        self.sites = tuple(sites)

    def joint(self) -> dist.Distribution:
        """q(u_n): batch shape ``[N]``, event shape ``[T]``."""
        raise NotImplementedError

    def forward(self, x: Tensor, **batch: Any) -> dict[str, Tensor]:
        with pyro.plate(DATA_PLATE, x.shape[0]):
            u = pyro.sample(self.AUXILIARY, self.joint(), infer={"is_auxiliary": True})
            parts = u.split([s.size for s in self.sites], dim=-1)
            return {s.name: self._site(s, u_s) for s, u_s in zip(self.sites, parts)}

    @staticmethod
    def _site(site: LatentSite, u: Tensor) -> Tensor:
        """Sample site ``site`` at T_s(u) for u ``[..., N, size]``, its density carried along."""
        value = site.constrain(u)
        shaped = u.reshape(u.shape[:-1] + site.unconstrained_shape)
        log_det = site.transform.log_abs_det_jacobian(shaped, value)
        log_det = sum_rightmost(log_det, log_det.dim() - (u.dim() - 1))  # to [..., N]
        return pyro.sample(site.name, dist.Delta(value, log_density=-log_det,
                                                 event_dim=len(site.event_shape)))


def unconstrained_draws(sites: Sequence[LatentSite], draws: Mapping[str, Tensor]) -> Tensor:
    """Site values ``{name: [..., N, *event_shape]}`` → joint unconstrained ``[..., N, T]``."""
    return torch.cat([s.unconstrain(draws[s.name]) for s in sites], dim=-1)


def _block_mask(sites: Sequence[LatentSite], full: Sequence[bool]) -> Tensor:
    """``[T, T]`` bool, True on the strict lower triangle of every full-rank site's block."""
    total = sum(s.size for s in sites)
    mask = torch.zeros(total, total, dtype=torch.bool)
    lo = 0
    for s, is_full in zip(sites, full):
        if is_full:
            mask[lo:lo + s.size, lo:lo + s.size] = torch.ones(s.size, s.size).tril(-1).bool()
        lo += s.size
    return mask


class LocalGaussian(JointGuide):
    """q(u_n) = N(loc_n, L_n L_nᵀ) with free parameters per point: ``loc`` ``[N, T]``, a
    positive diagonal (softplus) and, within the blocks of full-rank sites only, a free
    strict lower triangle of L ``[N, T, T]``. Diagonal everywhere else (then q is
    ``Normal(loc, scale).to_event(1)`` itself)."""

    def __init__(self, sites: Sequence[LatentSite], loc: Tensor, scale_tril: Tensor,
                 full: Sequence[bool]) -> None:
        super().__init__(sites)
        diag = scale_tril.detach().diagonal(dim1=-2, dim2=-1)
        self.loc = nn.Parameter(loc.detach().clone())
        self.raw_diag = nn.Parameter(inverse_softplus(diag.clamp_min(1e-4)))
        mask = _block_mask(sites, full).to(loc.device)
        self.register_buffer("mask", mask)
        self.full_rank = bool(mask.any())
        if self.full_rank:
            self.lower = nn.Parameter((scale_tril.detach() * mask).clone())

    def joint(self) -> dist.Distribution:
        scale = softplus(self.raw_diag)
        if not self.full_rank:
            return dist.Normal(self.loc, scale, validate_args=False).to_event(1)
        # The mask keeps the off-block entries at zero (their gradient is zero too).
        tril = self.lower * self.mask + torch.diag_embed(scale)
        return dist.MultivariateNormal(self.loc, scale_tril=tril, validate_args=False)


class PosteriorProposal(JointGuide):
    """A multivariate Student-t per point over the joint unconstrained coordinates,
    matched to posterior draws ``{name: [..., N, *event_shape]}`` (NUTS's).

    The importance proposal for log p(x): it has the true posterior's mean and full
    covariance (in unconstrained space, where it is closest to Gaussian), and heavier
    tails than it (``df`` = 5) so that the weights stay bounded where the posterior's
    tails are heavier than Gaussian.
    """

    def __init__(self, sites: Sequence[LatentSite], draws: Mapping[str, Tensor], df: float = 5.0,
                 jitter: float = 1e-5) -> None:
        super().__init__(sites)
        u = unconstrained_draws(sites, draws)
        flat = u.reshape(-1, *u.shape[-2:]).double()  # [draws, N, T]
        loc = flat.mean(0)
        centred = (flat - loc).transpose(0, 1)  # [N, draws, T]
        cov = centred.transpose(1, 2) @ centred / (flat.shape[0] - 1)
        cov = cov + jitter * torch.eye(u.shape[-1], dtype=cov.dtype, device=cov.device)
        # Scaled so that the t's covariance, df/(df−2)·ΣΣᵀ, equals the sample covariance.
        self.register_buffer("loc", loc.to(u.dtype))
        self.register_buffer("scale_tril", torch.linalg.cholesky(cov * (df - 2) / df).to(u.dtype))
        self.df = df

    def joint(self) -> dist.Distribution:
        return dist.MultivariateStudentT(self.df, self.loc, self.scale_tril, validate_args=False)


def _site_start(fn: dist.Distribution | None, site: LatentSite, u: Tensor
                ) -> tuple[Tensor, Tensor, bool]:
    """Where the local fit of one site starts: ``loc`` ``[N, size]``, ``scale_tril``
    ``[N, size, size]`` and whether the block is full-rank. The guide's own moments
    where its q(z_s | x) is a Gaussian on ℝ, else those of its draws u ``[k, N, size]``
    mapped to unconstrained space."""
    n = u.shape[1]
    if fn is not None and is_real(site.support):
        if isinstance(fn, MultivariateNormal):  # a full-rank guide: its family is full-rank
            return fn.loc.reshape(n, site.size), fn.scale_tril, True
        try:
            mean, sd = fn.mean.reshape(n, site.size), fn.stddev.reshape(n, site.size)
            return mean, torch.diag_embed(sd), False
        except (NotImplementedError, RuntimeError):
            pass  # e.g. a flow: no closed-form moments; its draws below
    return u.mean(0), torch.diag_embed(u.std(0)), False


@torch.no_grad()
def local_start(model: Callable, guide: Callable, x: Tensor, batch: Batch,
                sites: Sequence[LatentSite], draws: int = 256) -> LocalGaussian:
    """A :class:`LocalGaussian` at the amortized guide's output for the rows of ``x``
    ``[N, D]``: block-diagonal, each site's block full-rank where the guide's q(z_s | x)
    is a ``MultivariateNormal``."""
    guide_nodes = trace_program(guide, x, batch).nodes
    u = unconstrained_draws(sites, draw_latents(model, guide, x, batch, draws, sites))
    parts = u.split([s.size for s in sites], dim=-1)
    starts = [_site_start(guide_nodes[s.name]["fn"] if s.name in guide_nodes else None, s, part)
              for s, part in zip(sites, parts)]
    loc = torch.cat([start[0] for start in starts], dim=-1)
    scale_tril = torch.stack([torch.block_diag(*(start[1][i] for start in starts))
                              for i in range(x.shape[0])])
    return LocalGaussian(sites, loc, scale_tril, [start[2] for start in starts])


def fit_local(model: Callable, guide: Callable, x: Tensor, cfg: DiagnoseConfig,
              progress: bool = False, batch: Batch | None = None,
              sites: Sequence[LatentSite] | None = None) -> LocalGaussian:
    """The best Gaussian of the guide's family (:func:`local_start`) for each row of
    ``x`` ``[N, D]`` (per-row extras ``batch``), all N in one batch.

    Starts at the amortized guide's output and maximizes each point's ELBO by
    Adam on Pyro's ``Trace_ELBO``; the loss is a sum over independent points, so
    each point's parameters follow their own gradient.
    """
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    sites = sites or story_sites(model, x, batch)
    local = local_start(model, guide, x, batch, sites)
    elbo = Trace_ELBO(num_particles=cfg.local_particles, vectorize_particles=True,
                      max_plate_nesting=1)
    opt = torch.optim.Adam(local.parameters(), lr=cfg.local_lr)
    # Decaying the rate lets the Monte Carlo gradient noise die out near the optimum.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.local_steps)
    bar = tqdm(range(cfg.local_steps), desc="local SVI", disable=not progress, leave=False)
    with frozen(model, guide), pyro.get_param_store().scope(), pyro.validation_enabled(False):
        for _ in bar:
            loss = elbo.differentiable_loss(model, local, x, **batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return local
