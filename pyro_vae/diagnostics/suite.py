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

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.infer import MCMC, NUTS, Predictive, Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor, nn
from torch.distributions import (Independent, MultivariateNormal, Normal, TransformedDistribution,
                                 kl_divergence)
from torch.distributions.transforms import IndependentTransform
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from pyro_vae.evaluate import log_importance_weights, particle_traces, psis_diagnostics
from pyro_vae.models.networks import inverse_softplus
from pyro_vae.programs import as_program
from pyro_vae.traces import (DATA_PLATE, LatentSite, image_site, index_rows, is_real,
                             latent_sites, log_mean_exp, slice_rows, trace_program)

ACTIVE_THRESHOLD = 0.01
RHAT_OK = 1.01
PARTICLE_BUDGET = 4096
"""Draws × points per vectorized program call: about what keeps a CPU call cache-sized."""
Batch = Mapping[str, Tensor]


@dataclass(frozen=True)
class DiagnoseConfig:
    """How much work each diagnostic does."""

    points: int = 16
    """N, held-out points whose posterior is sampled by NUTS and fitted locally."""
    chains: int = 4
    """NUTS chains (each started at a draw from the amortized guide)."""
    warmup: int = 300
    """NUTS warm-up (adaptation) iterations per chain."""
    samples: int = 300
    """NUTS draws kept per chain."""
    max_tree_depth: int = 8
    """NUTS trajectories stop at 2^depth leapfrog steps."""
    jit: bool = True
    """Compile NUTS's potential energy with the PyTorch JIT (about 2× faster on a CPU)."""
    local_steps: int = 600
    """Adam steps of the per-point (local) Gaussian fit."""
    local_lr: float = 0.05
    """Starting learning rate of that fit (cosine-decayed to zero)."""
    local_particles: int = 32
    """Draws of z per point in each local SVI step."""
    elbo_samples: int = 2000
    """K: draws per point for the ELBO and IWAE estimates of the gap table."""
    collapse_points: int = 2000
    """Held-out points for the KL per dimension and the active units."""
    collapse_draws: int = 32
    """Guide draws per point for the collapse measures (they average over the parents of
    each site, and are the Monte Carlo draws where a KL has no closed form)."""
    ppc_points: int = 1000
    """Held-out points for the posterior predictive checks."""
    seed: int = 0
    """Seeds the point selection and every random draw."""


# ---------------------------------------------------------------------------- trace helpers


def _chunks(k: int, n: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of the particle chunks that keep each call near ``PARTICLE_BUDGET``."""
    step = max(1, PARTICLE_BUDGET // max(n, 1))
    for lo in range(0, k, step):
        yield lo, min(step, k - lo)


def _replayed_traces(model: Callable, guide: Callable, x: Tensor, batch: Batch, k: int
                     ) -> tuple[poutine.Trace, poutine.Trace]:
    """Guide trace with ``k`` draws per point and the model's trace replayed against it
    (the evaluator's :func:`~pyro_vae.evaluate.particle_traces`), hidden from outer handlers."""
    model_trace, guide_trace = poutine.block(particle_traces)(model, guide, x, k,
                                                              kwargs=dict(batch))
    return guide_trace, model_trace


@torch.no_grad()
def draw_latents(model: Callable, guide: Callable, x: Tensor, batch: Batch, k: int,
                 sites: Sequence[LatentSite]) -> dict[str, Tensor]:
    """``k`` joint draws per point of every latent site from the guide (then the model for
    sites the guide leaves out): ``{name: [k, N, *event_shape]}``."""
    parts: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    for _, size in _chunks(k, x.shape[0]):
        _, model_trace = _replayed_traces(model, guide, x, batch, size)
        for s in sites:
            parts[s.name].append(model_trace.nodes[s.name]["value"])
    return {name: torch.cat(values) for name, values in parts.items()}


def _log_prob(site: dict, value: Tensor, batch_dims: int) -> Tensor:
    """log density of ``value`` under a traced site's distribution, summed down to
    ``batch_dims`` leading dimensions (``[N]`` or ``[k, N]``)."""
    lp = site["fn"].log_prob(value)
    return sum_rightmost(lp, lp.dim() - batch_dims)


@torch.no_grad()
def image_log_prob(model: Callable, x: Tensor, batch: Batch, latents: Mapping[str, Tensor],
                   image: str) -> Tensor:
    """log p(x_n | z_k) ``[k, N]`` of the image site at given latents ``{name: [k, N, ...]}``,
    from traces of the model conditioned on them."""
    k = next(iter(latents.values())).shape[0]
    out = []
    for lo, size in _chunks(k, x.shape[0]):
        part = {name: value[lo:lo + size] for name, value in latents.items()}
        trace, _ = poutine.block(particle_traces)(poutine.condition(model, data=part), None, x,
                                                  size, kwargs=dict(batch))
        out.append(_log_prob(trace.nodes[image], x, 2))
    return torch.cat(out)


def story_sites(model: Callable, x: Tensor, batch: Batch | None = None) -> tuple[LatentSite, ...]:
    """The latent sites of one run of ``model(x, **batch)``, in order
    (:func:`pyro_vae.traces.latent_sites`)."""
    return tuple(latent_sites(model, x, dict(batch or {}), who="diagnose"))


def find_image_site(model: Callable, x: Tensor, batch: Batch) -> str:
    """The name of the observed site that scores ``x`` itself."""
    return image_site(trace_program(model, x, batch), x)


# ---------------------------------------------------------------------------- joint guides


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


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the trained parameters while z alone is inferred."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            # pyro.module says so of every frozen parameter of a network in training mode.
            warnings.filterwarnings("ignore", message=".*not registered in the param store")
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


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
    bar = tqdm(range(cfg.local_steps), desc="local SVI", disable=not progress or None, leave=False)
    with frozen(model, guide), pyro.get_param_store().scope(), pyro.validation_enabled(False):
        for _ in bar:
            loss = elbo.differentiable_loss(model, local, x, **batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return local


# ---------------------------------------------------------------------------- NUTS


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


# ---------------------------------------------------------------------------- gaps


@dataclass(frozen=True)
class Gaps:
    """Per point ``[N]`` (nats): log p(x), the ELBOs of the amortized and the local guide,
    Monte Carlo standard errors of the ELBOs and of log p(x) (delta method, sd(w) /
    (mean(w) √K): meaningful while k̂ < 0.5), and PSIS k̂ of the amortized guide's, the
    local optimum's and the log p(x) proposal's importance weights."""

    log_px: Tensor
    elbo_amortized: Tensor
    elbo_local: Tensor
    elbo_amortized_se: Tensor
    elbo_local_se: Tensor
    khat_amortized: Tensor
    khat_local: Tensor
    khat_log_px: Tensor
    log_px_se: Tensor

    @property
    def approximation(self) -> Tensor:
        return self.log_px - self.elbo_local

    @property
    def amortization(self) -> Tensor:
        return self.elbo_local - self.elbo_amortized


def inference_gaps(model: Callable, guide: Callable, local: JointGuide, x: Tensor, samples: int,
                   proposal: JointGuide | None = None, batch: Batch | None = None) -> Gaps:
    """ELBOs of the amortized and local guides on ``x`` ``[N, D]`` (per-row extras ``batch``),
    and log p(x), each from K = ``samples`` importance weights of the evaluator.

    log p(x) is the IWAE bound with ``proposal`` (default: the local optimum).
    :func:`diagnose` passes a :class:`PosteriorProposal` fitted to the NUTS draws: a
    diagonal Gaussian is too narrow a proposal in many dimensions (its k̂ exceeds 0.7),
    and would understate log p(x) and with it the approximation gap.
    """
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    # A pointwise guide holds one distribution per row of x, so the evaluator must not split
    # the rows; about 4096 draws per program call keeps each call cache-sized on a CPU.
    chunks = {"point_chunk": len(x), "particle_chunk": max(1, PARTICLE_BUDGET // len(x)),
              "batch": batch}
    weights = {name: log_importance_weights(model, q, x, samples, **chunks)
               for name, q in (("amortized", guide), ("local", local))}
    weights["log_px"] = (weights["local"] if proposal is None
                         else log_importance_weights(model, proposal, x, samples, **chunks))
    se = lambda lw: (lw.std(0) / math.sqrt(samples)).cpu()  # noqa: E731
    khat = {name: psis_diagnostics(lw).khat.float() for name, lw in weights.items()}
    w = (weights["log_px"] - weights["log_px"].max(0).values).exp()
    return Gaps(log_mean_exp(weights["log_px"]).cpu(), weights["amortized"].mean(0).cpu(),
                weights["local"].mean(0).cpu(), se(weights["amortized"]), se(weights["local"]),
                khat["amortized"], khat["local"], khat["log_px"],
                (w.std(0) / (w.mean(0) * math.sqrt(samples))).cpu())


# ---------------------------------------------------------------------------- collapse


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
        guide_trace, model_trace = _replayed_traces(model, guide, rows, fields, draws)
        for s in sites:
            q = guide_trace.nodes[s.name]["fn"] if s.name in guide_trace.nodes else None
            node = model_trace.nodes[s.name]
            terms[s.name].append(_site_terms(q, node["fn"], node["value"], s))
    return Collapse({s.name: _site_collapse(terms[s.name]) for s in sites})


# ---------------------------------------------------------------------------- PPC


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
                           x_rep.var(0).cpu(), _log_prob(node, x, 1).cpu(),
                           _log_prob(node, x_rep, 1).cpu())


# ---------------------------------------------------------------------------- ArviZ


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
                "ppc": _ppc_summary(self.ppc), "seconds": self.seconds}

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


def diagnose(model: Callable, guide: Callable, heldout: Tensor, cfg: DiagnoseConfig = DiagnoseConfig(),
             progress: bool = False, batch: Batch | None = None) -> Diagnostics:
    """Run every diagnostic of a fitted story/guide pair on held-out images ``heldout``
    ``[M, D]``, whose per-row extras (labels ``y``) are ``batch`` ``{name: [M, ...]}``.

    NUTS, the local fit and the gap table use ``cfg.points`` rows chosen by
    :func:`select_points`; the collapse and predictive checks use the first
    ``cfg.collapse_points`` / ``cfg.ppc_points`` rows.
    """
    model, guide, batch = as_program(model, "the story"), as_program(guide, "the guide"), dict(batch or {})
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        seconds[name] = time.perf_counter() - start
        return out

    indices = select_points(len(heldout), cfg.points, cfg.seed)
    x, fields = heldout[indices.to(heldout.device)], index_rows(batch, indices.to(heldout.device))
    sites = story_sites(model, x, fields)
    c, p = cfg.collapse_points, cfg.ppc_points
    with torch.random.fork_rng(devices=[heldout.device] if heldout.device.type == "cuda" else []):
        pyro.set_rng_seed(cfg.seed)
        nuts = timed("nuts", run_nuts, model, guide, x, cfg, progress, fields, sites)
        pyro.set_rng_seed(cfg.seed + 1)
        local = timed("local_svi", fit_local, model, guide, x, cfg, progress, fields, sites)
        gaps = timed("gaps", inference_gaps, model, guide, local, x, cfg.elbo_samples,
                     PosteriorProposal(sites, nuts.z), fields)
        collapse = timed("collapse", posterior_collapse, model, guide, heldout[:c],
                         slice_rows(batch, 0, c), cfg.collapse_draws, sites)
        ppc = timed("ppc", predictive_check, model, guide, heldout[:p], slice_rows(batch, 0, p), sites)
        idata = timed("inference_data", inference_data, model, guide, local, x, indices, nuts,
                      fields, sites)
    return Diagnostics(cfg, indices, sites, find_image_site(model, x, fields), nuts,
                       convergence(idata), gaps, collapse, ppc, idata, seconds)
