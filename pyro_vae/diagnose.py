"""Should this fit be trusted? The true posterior by NUTS against the guide, the
inference gaps, posterior collapse and posterior predictive checks.

For N selected held-out points x_n, under the trained decoder:

.. code-block:: text

    p(z | x_n) ∝ p(x_n | z) p(z)            sampled by NUTS (several chains; r̂, ESS by ArviZ)
    q*_n = argmax_q ELBO(q; x_n)            a free Gaussian per point (local SVI), the best
                                            member of the guide's family, started at q_φ(z | x_n)
    log p(x_n) ≥ ELBO(q*_n) ≥ ELBO(q_φ(· | x_n))
    log p(x_n) ≈ IWAE bound with a Student-t proposal matched to the NUTS draws

    approximation gap = log p(x) − ELBO(q*)       what the Gaussian family costs
    amortization gap  = ELBO(q*) − ELBO(q_φ)      what sharing one encoder costs

(Cremer, Li & Duvenaud 2018). Posterior collapse is read off KL(q(z_d | x) ‖ p(z_d))
per latent dimension and the active units of Burda et al. (2016), Cov_x(E_q[z_d]) > 0.01.
Posterior predictive checks draw x_rep ~ p(x | z), z ~ q(z | x), and compare them with
the held-out data.

The N points are independent given the decoder, so their posteriors form one product
distribution over z ``[N, d]``: one NUTS run samples all of them at once (the model is
simply called on the N points), and its per-coordinate r̂ and ESS are the per-point ones.
The price is one shared step size and trajectory length; the diagonal mass matrix still
adapts per coordinate. Chains run one after another (Pyro would otherwise fork one process
per chain, which shared CPUs and CUDA do not suit).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from pyro_vae.evaluate import log_importance_weights, log_mean_exp, psis_diagnostics
from pyro_vae.models.networks import inverse_softplus

ACTIVE_THRESHOLD = 0.01
RHAT_OK = 1.01


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
    ppc_points: int = 1000
    """Held-out points for the posterior predictive checks."""
    seed: int = 0
    """Seeds the point selection and every random draw."""


# ---------------------------------------------------------------------------- local Gaussian


def guide_moments(q: dist.Distribution, draws: int = 256) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation ``[N, d]`` of q(z | x); sampled when q has no closed form."""
    try:
        return q.mean.detach(), q.stddev.detach()
    except NotImplementedError:
        z = q.sample((draws,))
        return z.mean(0), z.std(0)


class PointwiseGuide(nn.Module):
    """A Pyro guide with one distribution per point, ``z_dist()`` of batch shape ``[N]``.

    It takes the model's signature ``(x, beta)``; x must be the N points it was
    built for (row n of x is scored against row n of the parameters).
    """

    def z_dist(self, x: Tensor | None = None) -> dist.Distribution:
        raise NotImplementedError

    def forward(self, x: Tensor, beta: float = 1.0) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):
                return pyro.sample("z", self.z_dist(x))


class LocalGaussian(PointwiseGuide):
    """q(z_n) = N(loc_n, diag scale_n²) with free parameters ``[N, d]``: one Gaussian per point."""

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.loc = nn.Parameter(loc.detach().clone())
        self.raw_scale = nn.Parameter(inverse_softplus(scale.detach().clamp_min(1e-4)))

    def z_dist(self, x: Tensor | None = None) -> dist.Distribution:
        """Batch shape ``[N]``, event shape ``[d]``."""
        return dist.Normal(self.loc, softplus(self.raw_scale), validate_args=False).to_event(1)


class PosteriorProposal(PointwiseGuide):
    """A multivariate Student-t per point, matched to NUTS draws ``z`` ``[..., N, d]``.

    The importance proposal for log p(x): it has the true posterior's mean and
    full covariance, and heavier tails than it (``df`` = 5) so that the weights
    stay bounded where the posterior's tails are heavier than Gaussian.
    """

    def __init__(self, z: Tensor, df: float = 5.0, jitter: float = 1e-5) -> None:
        super().__init__()
        flat = z.reshape(-1, *z.shape[-2:]).double()  # [draws, N, d]
        loc = flat.mean(0)
        centred = (flat - loc).transpose(0, 1)  # [N, draws, d]
        cov = centred.transpose(1, 2) @ centred / (flat.shape[0] - 1)
        cov = cov + jitter * torch.eye(z.shape[-1], dtype=cov.dtype, device=cov.device)
        # Scaled so that the t's covariance, df/(df−2)·ΣΣᵀ, equals the sample covariance.
        self.register_buffer("loc", loc.float())
        self.register_buffer("scale_tril", torch.linalg.cholesky(cov * (df - 2) / df).float())
        self.df = df

    def z_dist(self, x: Tensor | None = None) -> dist.Distribution:
        return dist.MultivariateStudentT(self.df, self.loc, self.scale_tril, validate_args=False)


class LocalFullRank(PointwiseGuide):
    """q(z_n) = N(loc_n, L_n L_nᵀ) with free ``loc`` ``[N, d]`` and lower-triangular ``L`` ``[N, d, d]``
    (positive diagonal through softplus): the local optimum for a full-rank guide."""

    def __init__(self, loc: Tensor, scale_tril: Tensor) -> None:
        super().__init__()
        self.loc = nn.Parameter(loc.detach().clone())
        diag = scale_tril.detach().diagonal(dim1=-2, dim2=-1)
        self.raw_diag = nn.Parameter(inverse_softplus(diag.clamp_min(1e-4)))
        self.lower = nn.Parameter(scale_tril.detach().tril(-1).clone())

    def z_dist(self, x: Tensor | None = None) -> dist.Distribution:
        tril = self.lower.tril(-1) + torch.diag_embed(softplus(self.raw_diag))
        return dist.MultivariateNormal(self.loc, scale_tril=tril, validate_args=False)


def local_family(q: dist.Distribution) -> PointwiseGuide:
    """Free per-point copies of the amortized q(z | x_n), started at its output: full-rank
    for a multivariate Normal guide, else diagonal (also for flows, whose family has no
    per-point parameters to free)."""
    if isinstance(q, MultivariateNormal):
        return LocalFullRank(q.loc, q.scale_tril)
    return LocalGaussian(*guide_moments(q))


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the trained parameters while z alone is inferred."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def fit_local(model: nn.Module, guide: nn.Module, x: Tensor, cfg: DiagnoseConfig,
              progress: bool = False) -> PointwiseGuide:
    """The best Gaussian of the guide's family (:func:`local_family`) for each row of
    ``x`` ``[N, D]``, all N in one batch.

    Starts at the amortized guide's output and maximizes each point's ELBO by
    Adam on Pyro's ``Trace_ELBO``; the loss is a sum over independent points, so
    each point's parameters follow their own gradient.
    """
    with torch.no_grad():
        local = local_family(guide.z_dist(x))
    elbo = Trace_ELBO(num_particles=cfg.local_particles, vectorize_particles=True,
                      max_plate_nesting=1)
    opt = torch.optim.Adam(local.parameters(), lr=cfg.local_lr)
    # Decaying the rate lets the Monte Carlo gradient noise die out near the optimum.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.local_steps)
    bar = tqdm(range(cfg.local_steps), desc="local SVI", disable=not progress or None, leave=False)
    with frozen(model, guide), pyro.get_param_store().scope(), pyro.validation_enabled(False):
        for _ in bar:
            loss = elbo.differentiable_loss(model, local, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return local


# ---------------------------------------------------------------------------- NUTS


@dataclass(frozen=True)
class NutsResult:
    """Draws of z from p(z | x_n): ``z`` ``[chains, draws, N, d]``; ``diverging`` ``[chains, draws]``."""

    z: Tensor
    diverging: Tensor
    seconds: float


def run_nuts(model: nn.Module, guide: nn.Module, x: Tensor, cfg: DiagnoseConfig,
             progress: bool = False) -> NutsResult:
    """Sample p(z | x_n) for every row of ``x`` ``[N, D]`` in one product-space NUTS run per chain.

    Each chain starts at its own draw from the amortized guide, so that chains
    which disagree (r̂ > 1) reveal posteriors the guide misses.
    """
    start = time.perf_counter()
    draws, divergent = [], []
    # The guide too: a VampPrior reads the guide's encoder.
    with frozen(model, guide):
        start_points = guide.z_dist(x).sample((cfg.chains,)).detach()
        for chain in range(cfg.chains):
            pyro.set_rng_seed(cfg.seed + 1000 * chain)
            # Every prior here lives on all of R^d; saying so spares Pyro from deriving a
            # transform from the support, which it cannot do for mixtures.
            kernel = NUTS(model, max_plate_nesting=1, max_tree_depth=cfg.max_tree_depth,
                          jit_compile=cfg.jit, ignore_jit_warnings=True, target_accept_prob=0.8,
                          transforms={"z": dist.transforms.identity_transform},
                          init_strategy=init_to_value(values={"z": start_points[chain]}))
            mcmc = MCMC(kernel, num_samples=cfg.samples, warmup_steps=cfg.warmup,
                        disable_progbar=not progress)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
                mcmc.run(x)
            draws.append(mcmc.get_samples()["z"].detach())
            flags = torch.zeros(cfg.samples, dtype=torch.bool)
            flags[mcmc.diagnostics()["divergences"]["chain 0"]] = True
            divergent.append(flags)
    return NutsResult(torch.stack(draws), torch.stack(divergent), time.perf_counter() - start)


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


def inference_gaps(model: nn.Module, guide: nn.Module, local: PointwiseGuide, x: Tensor,
                   samples: int, proposal: nn.Module | None = None) -> Gaps:
    """ELBOs of the amortized and local guides on ``x`` ``[N, D]``, and log p(x), each from
    K = ``samples`` importance weights of the evaluator.

    log p(x) is the IWAE bound with ``proposal`` (default: the local optimum).
    :func:`diagnose` passes a :class:`PosteriorProposal` fitted to the NUTS draws: a
    diagonal Gaussian is too narrow a proposal in many dimensions (its k̂ exceeds 0.7),
    and would understate log p(x) and with it the approximation gap.
    """
    # A pointwise guide holds one distribution per row of x, so the evaluator must not split
    # the rows; about 4096 draws per program call keeps each call cache-sized on a CPU.
    chunks = {"point_chunk": len(x), "particle_chunk": max(1, 4096 // len(x))}
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
class Collapse:
    """Per latent dimension ``[d]``: KL(q(z_d | x) ‖ p(z_d)) averaged over x (NaN where a
    marginal is unknown), Cov_x(E_q[z_d]), and whether the dimension is active (that
    variance above ``ACTIVE_THRESHOLD``); ``kl_total`` is KL(q(z | x) ‖ p(z)) averaged over x."""

    kl: Tensor
    kl_total: float
    mean_variance: Tensor
    analytic: bool

    @property
    def active(self) -> Tensor:
        return self.mean_variance > ACTIVE_THRESHOLD


def _marginals(d: dist.Distribution) -> dist.Distribution | None:
    """The one-dimensional marginals of d as one distribution of batch shape ``[..., d]``,
    where they are known: factorized distributions and multivariate Normals."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    if isinstance(d, MultivariateNormal):
        return dist.Normal(d.loc, d.variance.sqrt())
    return None


def kl_per_dimension(q: dist.Distribution, p: dist.Distribution, draws: int = 64) -> tuple[Tensor, bool]:
    """KL(q(z_d | x_n) ‖ p(z_d)) between one-dimensional marginals, ``[N, d]``, and whether it is exact.

    Analytic for Normal marginals; a Monte Carlo estimate for other known
    marginals; NaN where a marginal density is unknown (flow guides, mixture priors).
    """
    qm, pm = _marginals(q), _marginals(p)
    if isinstance(qm, Normal) and isinstance(pm, Normal):
        return kl_divergence(qm, pm), True
    if qm is None or pm is None:
        return torch.full(q.batch_shape + q.event_shape, float("nan")), False
    z = qm.sample((draws,))
    return (qm.log_prob(z) - pm.log_prob(z)).mean(0), False


def kl_total(q: dist.Distribution, p: dist.Distribution, draws: int = 64) -> Tensor:
    """KL(q(z | x_n) ‖ p(z)) ``[N]``: analytic where torch knows it, else Monte Carlo."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((draws,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


@torch.no_grad()
def posterior_collapse(model: nn.Module, guide: nn.Module, x: Tensor) -> Collapse:
    """KL per dimension and in all, and the variance over data of E_q[z_d | x], for ``x`` ``[N, D]``."""
    q, p = guide.z_dist(x), model.z_dist()
    kl, analytic = kl_per_dimension(q, p)
    mean, _ = guide_moments(q)
    return Collapse(kl.mean(0).cpu(), float(kl_total(q, p).mean()), mean.var(0).cpu(), analytic)


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
def predictive_check(model: nn.Module, guide: nn.Module, x: Tensor) -> PredictiveCheck:
    z = guide.z_dist(x).sample()
    px = model.x_dist(z)
    x_rep = px.sample()
    return PredictiveCheck(x.mean(0).cpu(), x.var(0).cpu(), x_rep.mean(0).cpu(),
                           x_rep.var(0).cpu(), px.log_prob(x).cpu(), px.log_prob(x_rep).cpu())


# ---------------------------------------------------------------------------- ArviZ


def guide_draws(q: dist.Distribution, chains: int, draws: int) -> Tensor:
    """``[chains, draws, N, d]`` independent draws from q, shaped like the NUTS output."""
    z = q.sample((chains * draws,))
    return z.reshape(chains, draws, *z.shape[1:])


@torch.no_grad()
def inference_data(model: nn.Module, guide: nn.Module, local: PointwiseGuide, x: Tensor,
                   indices: Tensor, nuts: NutsResult) -> Any:
    """ArviZ InferenceData for the N points ``x`` ``[N, D]``.

    Groups: ``posterior`` (NUTS draws of z, dims chain, draw, point, latent),
    ``guide`` and ``local_guide`` (as many independent draws from q_φ(z | x) and
    from the local optimum), ``log_likelihood`` (log p(x_n | z) at each NUTS
    draw), ``sample_stats`` (divergences) and ``observed_data`` (x).
    """
    import arviz as az

    chains, draws = nuts.z.shape[:2]
    coords = {"point": indices.cpu().numpy(), "latent": np.arange(nuts.z.shape[-1]),
              "pixel": np.arange(x.shape[1])}
    dims = {"z": ["point", "latent"], "x": ["point"]}
    z = nuts.z.to(x.device)
    idata = az.from_dict(
        posterior={"z": z.cpu().numpy()},
        log_likelihood={"x": model.x_dist(z).log_prob(x).cpu().numpy()},
        sample_stats={"diverging": nuts.diverging.numpy()}, coords=coords, dims=dims)
    extra = {name: az.dict_to_dataset({"z": guide_draws(q, chains, draws).cpu().numpy()},
                                      coords=coords, dims=dims)
             for name, q in (("guide", guide.z_dist(x)), ("local_guide", local.z_dist(x)))}
    extra["observed_data"] = az.dict_to_dataset({"x": x.cpu().numpy()}, coords=coords,
                                                dims={"x": ["point", "pixel"]}, default_dims=[])
    idata.add_groups(extra)
    return idata


@dataclass(frozen=True)
class Convergence:
    """ArviZ's r̂ and bulk/tail ESS of each NUTS coordinate ``[N, d]``, and the divergence count."""

    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    divergences: int


def convergence(idata: Any) -> Convergence:
    import arviz as az

    post = idata.posterior
    return Convergence(az.rhat(post).z.values, az.ess(post, method="bulk").z.values,
                       az.ess(post, method="tail").z.values,
                       int(idata.sample_stats.diverging.values.sum()))


# ---------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class Diagnostics:
    """Everything :func:`diagnose` measured; ``summary()`` is the JSON of it."""

    config: DiagnoseConfig
    indices: Tensor
    nuts: NutsResult
    convergence: Convergence
    gaps: Gaps
    collapse: Collapse
    ppc: PredictiveCheck
    idata: Any
    seconds: dict[str, float]

    def guide_vs_nuts(self) -> dict[str, float]:
        """How far the amortized and local guides sit from the NUTS posterior, in posterior SDs."""
        z = self.nuts.z.flatten(0, 1).cpu()
        mean, sd = z.mean(0), z.std(0)
        out = {}
        for name in ("guide", "local_guide"):
            g = torch.as_tensor(self.idata[name].z.values).flatten(0, 1)
            out[f"{name}_mean_offset_sd"] = float(((g.mean(0) - mean).abs() / sd).mean())
            out[f"{name}_sd_ratio"] = float((g.std(0) / sd).mean())
        return out

    def summary(self) -> dict[str, Any]:
        g, c, conv = self.gaps, self.collapse, self.convergence
        mean = lambda t: float(t.double().mean())  # noqa: E731
        sem = lambda t: (float(t.double().std() / math.sqrt(t.numel()))  # noqa: E731
                         if t.numel() > 1 else 0.0)
        per_point = {name: [_finite_or_none(v) for v in getattr(g, name)] for name in
                     ("log_px", "elbo_amortized", "elbo_local", "approximation", "amortization",
                      "khat_amortized", "khat_local", "khat_log_px", "log_px_se")}
        return {
            "config": dict(vars(self.config)), "points": [int(i) for i in self.indices],
            "nuts": {"rhat_max": float(np.nanmax(conv.rhat)),
                     "fraction_rhat_above_1.01": float(np.mean(conv.rhat > RHAT_OK)),
                     "ess_bulk_min": float(np.nanmin(conv.ess_bulk)),
                     "ess_tail_min": float(np.nanmin(conv.ess_tail)), "divergences": conv.divergences,
                     "draws": int(self.nuts.z.shape[0] * self.nuts.z.shape[1]),
                     **self.guide_vs_nuts()},
            "gaps": {"log_px": mean(g.log_px), "elbo_amortized": mean(g.elbo_amortized),
                     "elbo_local": mean(g.elbo_local), "approximation_gap": mean(g.approximation),
                     "approximation_gap_se": sem(g.approximation), "amortization_gap": mean(g.amortization),
                     "amortization_gap_se": sem(g.amortization),
                     "fraction_khat_amortized_above_0.7": mean((g.khat_amortized > 0.7).float()),
                     "fraction_khat_local_above_0.7": mean((g.khat_local > 0.7).float()),
                     "fraction_khat_log_px_above_0.7": mean((g.khat_log_px > 0.7).float()),
                     "per_point": per_point},
            "collapse": {"kl_per_dim": [_finite_or_none(v) for v in c.kl], "kl_total": c.kl_total,
                         "kl_analytic": c.analytic,
                         "mean_variance_per_dim": [float(v) for v in c.mean_variance],
                         "active_units": int(c.active.sum()), "latent_dim": int(c.kl.numel())},
            "ppc": {"p_value": self.ppc.p_value, "loglik_data_mean": mean(self.ppc.loglik_data),
                    "loglik_rep_mean": mean(self.ppc.loglik_rep),
                    "pixel_mean_abs_diff": mean((self.ppc.data_mean - self.ppc.rep_mean).abs()),
                    "pixel_var_abs_diff": mean((self.ppc.data_var - self.ppc.rep_var).abs())},
            "seconds": self.seconds,
        }


def _finite_or_none(value: Tensor) -> float | None:
    """JSON has no NaN: an unknown value is written as null."""
    v = float(value)
    return v if math.isfinite(v) else None


def select_points(n_available: int, n: int, seed: int) -> Tensor:
    """``n`` distinct row indices out of ``n_available``, by a seeded permutation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_available, generator=gen)[:min(n, n_available)]


def diagnose(model: nn.Module, guide: nn.Module, heldout: Tensor, cfg: DiagnoseConfig = DiagnoseConfig(),
             progress: bool = False) -> Diagnostics:
    """Run every diagnostic of a fitted model/guide pair on held-out images ``heldout`` ``[M, D]``.

    NUTS, the local fit and the gap table use ``cfg.points`` rows chosen by
    :func:`select_points`; the collapse and predictive checks use the first
    ``cfg.collapse_points`` / ``cfg.ppc_points`` rows.
    """
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        seconds[name] = time.perf_counter() - start
        return out

    indices = select_points(len(heldout), cfg.points, cfg.seed)
    x = heldout[indices.to(heldout.device)]
    with torch.random.fork_rng(devices=[heldout.device] if heldout.device.type == "cuda" else []):
        pyro.set_rng_seed(cfg.seed)
        nuts = timed("nuts", run_nuts, model, guide, x, cfg, progress)
        pyro.set_rng_seed(cfg.seed + 1)
        local = timed("local_svi", fit_local, model, guide, x, cfg, progress)
        gaps = timed("gaps", inference_gaps, model, guide, local, x, cfg.elbo_samples,
                     PosteriorProposal(nuts.z.to(x.device)))
        collapse = timed("collapse", posterior_collapse, model, guide, heldout[:cfg.collapse_points])
        ppc = timed("ppc", predictive_check, model, guide, heldout[:cfg.ppc_points])
        idata = timed("inference_data", inference_data, model, guide, local, x, indices, nuts)
    return Diagnostics(cfg, indices, nuts, convergence(idata), gaps, collapse, ppc, idata, seconds)
