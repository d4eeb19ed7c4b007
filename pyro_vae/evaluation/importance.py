"""How P(x) = ∫ p(x | z) p(z) dz is actually computed: three estimates of log p(x), with PSIS diagnostics.

For each data point x_n and K draws z_k the evaluator forms log importance weights

.. code-block:: text

    guided:  log w_kn = log p(x_n, z_k) − log q(z_k | x_n),   z_k ~ q(z | x_n)
             (latent sites that the guide leaves out are drawn from the model and cancel)
    prior:   log v_kn = log p(x_n | z_k),                      z_k ~ p(z)

and from them, per data point,

.. code-block:: text

    prior Monte Carlo   log (1/K Σ_k v_kn)     unbiased for p(x_n) on the linear scale (the naive method)
    ELBO                1/K Σ_k log w_kn       a lower bound, E = log p(x_n) − KL(q ‖ p(z | x_n))
    IWAE                log (1/K Σ_k w_kn)     a lower bound that rises to log p(x_n) as K grows

It works for any Pyro model/guide pair, called as ``model(x, **batch)`` and
``guide(x, **batch)`` with x ``[N, ...]`` (the story contract), whose latent and observed sites all
sit inside one data plate over the rows of x (at dim -1 when
``max_plate_nesting=1``). The K draws are a vectorized particle plate wrapped
around both programs; log-densities are summed over sites but the data
dimension is kept, unlike Pyro's ``vectorized_importance_weights``, which
collapses it. Everything runs under ``torch.no_grad()`` on the device of ``x``.

Quality of the guide as a proposal is reported with ArviZ's Pareto-smoothed
importance sampling: k̂ per point (trustworthy below 0.7, Yao et al. 2018) and
the normalized importance-sampling effective sample size.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.pixels import Pixels, check_binary, scored_pixels
from pyro_vae.programs import cuda_devices, seeded
from pyro_vae.traces import (
    is_enumerated,
    is_latent,
    log_mean_exp,
    particle_plate,
    slice_rows,
    trace_program,
)

__all__ = ["Estimate", "Evaluation", "KCurve", "PSISDiagnostics", "bits_per_dim", "evaluate",
           "log_importance_weights", "log_mean_exp", "psis_diagnostics"]

KHAT_THRESHOLD = 0.7
ESTIMATORS = ("prior_mc", "elbo", "iwae")


def local_log_prob(trace: poutine.Trace, n: int, keep: Callable[[str, dict], bool]) -> Tensor:
    """Σ of log_prob over the sample sites that ``keep(name, site)`` picks, keeping
    particles and data: ``[k, n]`` (or 0 when none is picked).

    A site whose log-density lacks the data dimension is global, with no per-point
    weight; it is refused.
    """
    total: Tensor | float = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["log_prob"]
        if lp.dim() < 1 or lp.shape[-1] != n:
            raise ValueError(f"site {name!r} has log-density of shape {list(lp.shape)}, not "
                             f"[particles, {n}]: every latent and observed site must be local "
                             f"to the data plate (one value per row of x)")
        if keep(name, site):
            total = total + lp
    return total  # type: ignore[return-value]


def particle_traces(model: Callable, guide: Callable | None, x: Tensor, k: int,
                    max_plate_nesting: int = 1, args: tuple = (), kwargs: dict | None = None,
                    enumerate_discrete: bool = False
                    ) -> tuple[poutine.Trace, poutine.Trace | None]:
    """Model trace (replayed against the guide's when there is one, so latent sites the guide
    leaves out come from the model's own conditionals) and guide trace, each with k draws per
    point in a plate at dim ``-(max_plate_nesting + 1)``, log-densities not yet computed.

    With ``enumerate_discrete``, sites marked ``infer={"enumerate": "parallel"}`` take all
    their values at once, in dimensions left of the particle plate: in the guide, and in the
    model where the guide does not already give them."""

    def vectorized(fn: Callable) -> Callable:
        def wrapped(*a: Any, **kw: Any) -> Any:
            with particle_plate(k, max_plate_nesting):
                return fn(*a, **kw)
        return wrapped

    def enumerated(fn: Callable) -> Callable:
        if not enumerate_discrete:
            return fn
        return poutine.enum(fn, first_available_dim=-(max_plate_nesting + 2))

    kwargs = kwargs or {}
    guide_trace = None
    if guide is not None:
        guide_trace = poutine.trace(vectorized(enumerated(guide))).get_trace(x, *args, **kwargs)
        # Replay inside enum: a site the guide gave is done before enum could enumerate it anew.
        model = poutine.replay(model, trace=guide_trace)
    model_trace = poutine.trace(vectorized(enumerated(model))).get_trace(x, *args, **kwargs)
    return model_trace, guide_trace


@torch.no_grad()
def log_importance_weights(model: Callable, guide: Callable | None, x: Tensor, num_samples: int, *,
                           particle_chunk: int | None = None, point_chunk: int | None = None,
                           max_plate_nesting: int = 1, args: tuple = (),
                           kwargs: dict | None = None, batch: dict[str, Tensor] | None = None
                           ) -> Tensor:
    """Per-data-point log importance weights, ``[K, N]`` (nats).

    With a guide: log p(x_n, z_k) − log q(z_k | x_n) for z_k ~ q(z | x_n).
    With ``guide=None`` the proposal is the model's own prior: z_k ~ p(z) and the
    weight is log p(x_n | z_k) (the observed sites only).

    Args:
        model: a Pyro program ``model(x, *args, **kwargs)``, its latent and observed
            sites local to a data plate over the rows of ``x``.
        guide: a Pyro program with the same arguments, or ``None``.
        x: data ``[N, ...]``; the weights are computed on its device.
        num_samples: K, the draws per data point.
        particle_chunk, point_chunk: the programs are run on ``particle_chunk``
            draws × ``point_chunk`` points at a time (default :func:`default_chunks`).
            Memory in use beyond the ``[K, N]`` result is bounded by one such
            chunk: a few tensors of ``particle_chunk · point_chunk · (D + widest
            hidden layer)`` floats for a decoder with output size D, whatever K and N.
        max_plate_nesting: plates the programs nest (the particle plate goes one further out).
        args, kwargs: further arguments for both programs, the same for every row.
        batch: per-row extras ``{name: [N, ...]}`` (labels ``y``), sliced with x.
    """
    chunks = _Chunks(*default_chunks(x.device, particle_chunk, point_chunk), max_plate_nesting,
                     args, kwargs or {})
    return _weights(model, guide, x, batch or {}, num_samples, chunks)


def default_chunks(device: torch.device, particle_chunk: int | None = None,
                   point_chunk: int | None = None) -> tuple[int, int]:
    """Draws × points per program call: small on CPU, where the ``[k, n, D]`` tensors
    should stay small enough for the caches (about 4096 draws a call was fastest for a
    784-pixel MLP VAE, where Pyro's per-call cost is then ~4% of the call), large on
    GPU, where the device must be kept busy."""
    k, n = (1024, 256) if device.type == "cuda" else (512, 8)
    return particle_chunk or k, point_chunk or n


@dataclass(frozen=True)
class _Chunks:
    particles: int
    points: int
    max_plate_nesting: int
    args: tuple
    kwargs: dict
    tick: Callable[[int], Any] | None = None
    """Called with the number of draws done after each program call (a progress bar)."""


def _weights(model: Callable, guide: Callable | None, x: Tensor, batch: dict[str, Tensor],
             num_samples: int, chunks: _Chunks) -> Tensor:
    """All K weights of points ``x`` ``[n, ...]`` (per-row extras ``batch``, sliced with x),
    a program chunk at a time: ``[K, n]``."""
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    out = torch.empty(num_samples, x.shape[0], device=x.device, dtype=dtype)
    for lo in range(0, x.shape[0], chunks.points):
        rows = x[lo:lo + chunks.points]
        fields = slice_rows(batch, lo, lo + chunks.points)
        for k_lo in range(0, num_samples, chunks.particles):
            k = min(chunks.particles, num_samples - k_lo)
            out[k_lo:k_lo + k, lo:lo + len(rows)] = _chunk_weights(model, guide, rows, fields, k,
                                                                   chunks)
            if chunks.tick is not None:
                chunks.tick(k * len(rows))
    return out


def _chunk_weights(model: Callable, guide: Callable | None, x: Tensor, batch: dict[str, Tensor],
                   k: int, chunks: _Chunks) -> Tensor:
    """One program call: k draws for each of the points ``x``: ``[k, n]``.

    Discrete sites marked for enumeration are summed, not sampled: every value at once in
    dimensions left of the particles, then Σ over them of p(x, …) / q(continuous | …). A site
    the guide enumerates leaves its own q out of the weight (Σ_c replaces E_{q(c)})."""
    n = x.shape[0]
    model_trace, guide_trace = particle_traces(model, guide, x, k, chunks.max_plate_nesting,
                                               chunks.args, {**chunks.kwargs, **batch},
                                               enumerate_discrete=True)
    model_trace.compute_log_prob()
    if guide_trace is not None:
        guide_trace.compute_log_prob()
    proposed = set() if guide_trace is None else {
        name for name, site in guide_trace.nodes.items() if is_latent(site)}
    if guide_trace is not None:
        # With the prior as the proposal every latent cancels within its own enumerated
        # branch (Σ_c p(c) p(x | z_c), z_c ~ p(z | c)), so nothing needs refusing there.
        check_cancelling(model_trace, proposed)
    # Latent sites the guide does not propose were drawn from the model's own conditional
    # prior, which then cancels between p and the proposal: only observed sites, enumerated
    # sites and the guide's sites enter the weight (with no guide, log p(x | z)).
    log_p = local_log_prob(model_trace, n, lambda name, site: site["is_observed"]
                            or name in proposed or is_enumerated(site))
    log_q = 0.0 if guide_trace is None else local_log_prob(
        guide_trace, n, lambda name, site: not site["is_observed"] and not is_enumerated(site))
    log_w = torch.as_tensor(log_p - log_q, device=x.device)
    while log_w.dim() > 2:  # Σ over the enumerated values
        log_w = torch.logsumexp(log_w, dim=0)
    return log_w.expand(k, n)


def check_cancelling(trace: poutine.Trace, proposed: set[str]) -> None:
    """A latent site drawn from the model's prior cancels from the weight only if it does not
    depend on an enumerated site (its draws would then differ per enumerated value)."""
    for name, site in trace.nodes.items():
        if is_latent(site) and name not in proposed and not is_enumerated(site) \
                and site["log_prob"].dim() > 2:
            raise ValueError(f"latent site {name!r} depends on an enumerated discrete site but "
                             f"is not proposed by the guide; with discrete sites summed out, "
                             f"the guide must propose every continuous latent that follows them")


def bits_per_dim(log_px: Tensor | float, data_dim: int) -> Tensor | float:
    """−log p(x) / (D ln 2): the code length per pixel, so lower is better while log p is higher."""
    return -log_px / (data_dim * math.log(2.0))


@dataclass(frozen=True)
class Estimate:
    """One estimator of log p(x): per point ``[N]`` and its mean ± standard error over points.

    ``bits_per_dim`` is −``mean`` / (D ln 2); its standard error scales the same way.
    """

    name: str
    per_point: Tensor
    mean: float
    stderr: float
    bits_per_dim: float
    bits_per_dim_stderr: float

    @classmethod
    def of(cls, name: str, per_point: Tensor, data_dim: int) -> "Estimate":
        per_point = per_point.detach().double().cpu()
        n = per_point.numel()
        mean = float(per_point.mean())
        stderr = float(per_point.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(name, per_point, mean, stderr, float(bits_per_dim(mean, data_dim)),
                   stderr / (data_dim * math.log(2.0)))

    def summary(self) -> dict[str, float | str]:
        """The numbers without the per-point tensor (for JSON)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "per_point"}


@dataclass(frozen=True)
class PSISDiagnostics:
    """How far the guide's importance weights can be trusted, per point.

    ``khat`` ``[N]``: Pareto shape of the weights' upper tail (PSIS); above
    ``threshold`` (0.7) the IWAE estimate of that point is unreliable; −∞ where
    all K weights are equal.
    ``ess`` ``[N]``: importance-sampling effective sample size of the smoothed
    weights divided by K, 1 / (K Σ_k w̃_k²) with w̃ normalized, in (0, 1].
    """

    khat: Tensor
    ess: Tensor
    fraction_above: float
    threshold: float = KHAT_THRESHOLD

    def summary(self) -> dict[str, float]:
        k = self.khat.double().clamp(min=-1.0)  # −∞ (constant weights) would swamp the mean
        return {"khat_mean": float(k.mean()), "khat_median": float(k.median()),
                "khat_max": float(k.max()), "fraction_khat_above": self.fraction_above,
                "khat_threshold": self.threshold, "ess_fraction_mean": float(self.ess.mean()),
                "ess_fraction_median": float(self.ess.median())}


def psis_diagnostics(log_w: Tensor, threshold: float = KHAT_THRESHOLD) -> PSISDiagnostics:
    """PSIS k̂ and normalized ESS of each point's K weights ``log_w`` ``[K, N]``.

    ``arviz.psislw`` reads the last axis as the sample axis, so all N points go
    in as one ``[N, K]`` array.
    """
    import arviz

    lw = log_w.T.double().cpu().numpy()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        smoothed, khat = arviz.psislw(lw)
    khat = np.asarray(khat, dtype=np.float64)
    # All K weights equal (q = p(z|x) exactly): there is no tail, and psislw's fit returns
    # inf; the proposal is perfect, so k̂ = −∞.
    khat[lw.max(axis=-1) == lw.min(axis=-1)] = -np.inf
    khat = torch.as_tensor(khat)
    # psislw returns normalized log weights: Σ_k exp(lw_k) = 1.
    ess = 1.0 / (np.exp(2.0 * smoothed).sum(axis=-1) * log_w.shape[0])
    return PSISDiagnostics(khat, torch.as_tensor(ess), float((khat > threshold).double().mean()),
                           threshold)


def k_grid(num_samples: int, points: int = 12) -> tuple[int, ...]:
    """Log-spaced K from 1 to ``num_samples`` (distinct integers, ``num_samples`` last)."""
    ks = np.unique(np.round(np.geomspace(1, num_samples, points)).astype(int))
    return tuple(int(k) for k in ks)


@dataclass(frozen=True)
class KCurve:
    """Each estimator's mean (± standard error over points) using only the first K draws."""

    ks: tuple[int, ...]
    mean: dict[str, tuple[float, ...]]
    stderr: dict[str, tuple[float, ...]]


def estimates_at(guided: Tensor, prior: Tensor, k: int) -> dict[str, Tensor]:
    """The three per-point estimates ``[N]`` from the first ``k`` rows of the weights ``[K, N]``."""
    return {"prior_mc": log_mean_exp(prior[:k]), "elbo": guided[:k].mean(0),
            "iwae": log_mean_exp(guided[:k])}


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured on N points with K draws each.

    ``prior_mc``, ``elbo`` and ``iwae`` are the three estimates of log p(x)
    (nats, and bits/dim); ``psis`` judges the guide's weights; ``curve`` gives
    each estimate against K.
    """

    prior_mc: Estimate
    elbo: Estimate
    iwae: Estimate
    psis: PSISDiagnostics
    curve: KCurve
    num_samples: int
    num_points: int
    data_dim: int
    seconds: float
    summed: tuple[str, ...] = ()
    """Discrete sites marked for enumeration: summed exactly over their values inside every
    weight, not sampled."""

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (no per-point tensors)."""
        return {"num_samples": self.num_samples, "num_points": self.num_points,
                "data_dim": self.data_dim, "seconds": self.seconds,
                "summed_exactly": list(self.summed),
                "estimates": {name: getattr(self, name).summary() for name in ESTIMATORS},
                "psis": self.psis.summary(),
                "curve": {"ks": list(self.curve.ks), "mean": self.curve.mean,
                          "stderr": self.curve.stderr}}


@torch.no_grad()
def evaluate(model: Callable, guide: Callable, data: Tensor, *, num_samples: int = 5000,
             particle_chunk: int | None = None, point_chunk: int | None = None,
             hold_points: int = 256, ks: Sequence[int] | None = None,
             seed: int | None = 0, progress: bool = False, max_plate_nesting: int = 1,
             args: tuple = (), kwargs: dict | None = None,
             batch: dict[str, Tensor] | None = None) -> Evaluation:
    """Estimate log p(x) of each row of ``data`` ``[N, ...]`` three ways, with PSIS diagnostics.

    Draws K = ``num_samples`` z per point from the guide (for the ELBO and the
    IWAE bound) and K from the prior (for naive Monte Carlo). The K weights of
    ``hold_points`` points at a time are held, reduced and dropped, so peak
    memory is about ``4 · K · hold_points · 8`` bytes of weights (two proposals,
    and PSIS's float64 copies) plus one program chunk of ``particle_chunk ×
    point_chunk`` draws (see :func:`log_importance_weights`), whatever N is.

    Args:
        model, guide: Pyro programs taking ``(x, *args, **kwargs)`` (see the module docstring).
        data: the points, on the device to compute on.
        num_samples: K, draws per point from each proposal.
        particle_chunk, point_chunk: draws × points per program call (see
            :func:`log_importance_weights`).
        hold_points: points whose K weights are held at once.
        ks: the K at which ``curve`` is read (default: log-spaced up to K).
        seed: seeds the draws without touching the caller's random state; ``None`` uses it.
        progress: show a tqdm bar over the draws (2·N·K in all).
        batch: per-row extras ``{name: [N, ...]}`` (labels ``y``), sliced with ``data``.
    """
    check_scorable(model, data, batch)
    start = time.perf_counter()
    n, data_dim = data.shape[0], int(data[0].numel())
    ks = tuple(ks or k_grid(num_samples))
    per_point: dict[str, list[Tensor]] = {name: [] for name in ESTIMATORS}
    at_k: dict[str, list[Tensor]] = {name: [] for name in ESTIMATORS}
    psis: list[PSISDiagnostics] = []
    with seeded(seed, data.device), _bar(2 * n * num_samples, progress) as bar:
        chunks = _Chunks(*default_chunks(data.device, particle_chunk, point_chunk),
                         max_plate_nesting, args, kwargs or {}, bar.update)
        for lo in range(0, n, hold_points):
            x, fields = data[lo:lo + hold_points], slice_rows(batch or {}, lo, lo + hold_points)
            weights = [_weights(model, q, x, fields, num_samples, chunks) for q in (guide, None)]
            for name, value in estimates_at(*weights, num_samples).items():
                per_point[name].append(value.cpu())
            curve = [estimates_at(*weights, k) for k in ks]
            for name in ESTIMATORS:
                at_k[name].append(torch.stack([c[name] for c in curve]).cpu())
            psis.append(psis_diagnostics(weights[0]))
    return Evaluation(*(Estimate.of(name, torch.cat(per_point[name]), data_dim) for name in ESTIMATORS),
                      _merge_psis(psis), _curve(ks, at_k), num_samples, n, data_dim,
                      time.perf_counter() - start, summed_sites(model, guide, data, batch))


BINARIZE_FIRST = ("binarize first, as fit and pyro-vae evaluate do: data.eval_split('test') "
                  "(one seeded draw for dynamic binarization) or torch.bernoulli(x)")


def check_scorable(model: Callable, x: Tensor, batch: dict[str, Tensor] | None = None) -> None:
    """A story that scores x on {0, 1} only (a Bernoulli likelihood) gets binary ``x``
    ``[N, ...]``: grey levels would give a number that bounds no log-probability. The story
    is traced on two rows to read its image site's support; the caller's random state is
    left as it was."""
    rows = x[:2]
    with torch.random.fork_rng(devices=cuda_devices(x)), \
            pyro.validation_enabled(False):  # check_binary says what is wrong, by row
        trace = trace_program(model, rows, slice_rows(batch or {}, 0, 2))
    if scored_pixels(trace, rows) == Pixels.BINARY:
        check_binary(x, "evaluate", BINARIZE_FIRST)


def summed_sites(model: Callable, guide: Callable, x: Tensor,
                 batch: dict[str, Tensor] | None = None) -> tuple[str, ...]:
    """The sites of guide or model, traced on two rows, that are marked for enumeration."""
    rows, names = slice_rows(batch or {}, 0, 2), []
    for program in (guide, model):
        names += [name for name, site in trace_program(program, x[:2], rows).nodes.items()
                  if is_enumerated(site) and name not in names]
    return tuple(names)


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, unit="draw", unit_scale=True, desc="evaluate",
                leave=False)


def _merge_psis(parts: list[PSISDiagnostics]) -> PSISDiagnostics:
    khat = torch.cat([p.khat for p in parts])
    return PSISDiagnostics(khat, torch.cat([p.ess for p in parts]),
                           float((khat > KHAT_THRESHOLD).double().mean()))


def _curve(ks: tuple[int, ...], at_k: dict[str, list[Tensor]]) -> KCurve:
    """Means and standard errors over points of the per-point estimates ``[len(ks), N]``."""
    mean, stderr = {}, {}
    for name, parts in at_k.items():
        values = torch.cat(parts, dim=1).double()
        n = values.shape[1]
        mean[name] = tuple(float(v) for v in values.mean(1))
        stderr[name] = tuple(float(v) for v in (values.std(1) / math.sqrt(n) if n > 1
                                                  else torch.full((len(ks),), float("nan"))))
    return KCurve(ks, mean, stderr)
