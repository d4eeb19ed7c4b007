"""What the importance weights say: the estimates of log p(x) with their standard errors
(nats and bits/dim), PSIS k̂ and ESS of the guide's weights, and the estimates against K.

From K weights per point ``[K, N]`` (:mod:`~pyro_vae.evaluation.importance`):

.. code-block:: text

    prior Monte Carlo   log (1/K Σ_k v_kn)     unbiased for p(x_n) on the linear scale (the naive method)
    ELBO                1/K Σ_k log w_kn       a lower bound, E = log p(x_n) − KL(q ‖ p(z | x_n))
    IWAE                log (1/K Σ_k w_kn)     a lower bound that rises to log p(x_n) as K grows

Quality of the guide as a proposal is reported with ArviZ's Pareto-smoothed importance
sampling: k̂ per point (trustworthy below 0.7, Yao et al. 2018) and the normalized
importance-sampling effective sample size.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_vae.traces import log_mean_exp

KHAT_THRESHOLD = 0.7
ESTIMATORS = ("prior_mc", "elbo", "iwae")


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
    """Time spent computing, summed over the chunks (in whichever runs they were computed)."""
    summed: tuple[str, ...] = ()
    """Discrete sites marked for enumeration: summed exactly over their values inside every
    weight, not sampled."""
    memory: dict[str, Any] | None = None
    """The chunks and the memory bound they were sized to (``ChunkPlan.summary``)."""

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (no per-point tensors)."""
        return {"num_samples": self.num_samples, "num_points": self.num_points,
                "data_dim": self.data_dim, "seconds": self.seconds,
                "summed_exactly": list(self.summed),
                "estimates": {name: getattr(self, name).summary() for name in ESTIMATORS},
                "psis": self.psis.summary(),
                "curve": {"ks": list(self.curve.ks), "mean": self.curve.mean,
                          "stderr": self.curve.stderr},
                **({} if self.memory is None else {"memory": self.memory})}


def merge_psis(parts: list[PSISDiagnostics]) -> PSISDiagnostics:
    """The diagnostics of consecutive groups of points as those of all of them."""
    khat = torch.cat([p.khat for p in parts])
    return PSISDiagnostics(khat, torch.cat([p.ess for p in parts]),
                           float((khat > KHAT_THRESHOLD).double().mean()))


def curve_of(ks: tuple[int, ...], at_k: dict[str, list[Tensor]]) -> KCurve:
    """Means and standard errors over points of the per-point estimates ``[len(ks), N]``."""
    mean, stderr = {}, {}
    for name, parts in at_k.items():
        values = torch.cat(parts, dim=1).double()
        n = values.shape[1]
        mean[name] = tuple(float(v) for v in values.mean(1))
        stderr[name] = tuple(float(v) for v in (values.std(1) / math.sqrt(n) if n > 1
                                                  else torch.full((len(ks),), float("nan"))))
    return KCurve(ks, mean, stderr)
