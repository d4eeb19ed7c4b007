"""The K log importance weights of each point reduced as they are drawn, a chunk of draws at a
time, so that memory does not grow with K: the same numbers as reducing all ``[K, N]`` at
once (:func:`~pyro_vae.evaluation.estimates.estimates_at`,
:func:`~pyro_vae.evaluation.estimates.psis_diagnostics`), up to float rounding.

.. code-block:: text

    log Σ_k w_k        a running logsumexp (float64)           prior MC, IWAE, their K-curve
    mean, sd of log w  Chan et al.'s pairwise update            ELBO and its Monte Carlo error
    log Σ_k w_k²       a running logsumexp of 2 log w           ESS, sd(w) / mean(w)
    PSIS k̂, ESS        the M + 1 largest log w, M = ⌈min(K/5, 3√K)⌉, and a running
                       logsumexp of the others

PSIS (Vehtari et al. 2024) smooths only the M largest weights, fitting a generalized Pareto
to those above the (M + 1)-th largest; every other weight enters the normalized weights as it
is. So the M + 1 largest (kept in a buffer that the next chunk's draws compete for; a draw
pushed out joins the running sums) and the sums of the rest give k̂ exactly and the ESS to
rounding. ArviZ's ``psislw`` is run on the buffer padded to 5 (M + 1) values below the
cutoff, with its ``reff`` chosen so that it takes the same M (the tail it reads is the one it
would read among all K weights).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

LOG_TINY = float(np.log(np.finfo(float).tiny))
"""PSIS's floor for the cutoff, relative to the largest log weight (as ArviZ's)."""


def tail_size(num_samples: int) -> int:
    """M, the number of largest weights PSIS smooths out of K (ArviZ's, with r_eff = 1)."""
    return int(math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples))))


def point_bytes(num_samples: int, num_ks: int, tail: bool) -> int:
    """Bytes :class:`RunningWeights` holds per point, the PSIS step's copies included."""
    scalars = 8 * (8 + 2 * num_ks)
    if not tail:
        return scalars
    m = tail_size(num_samples) + 1
    # the buffer and its merge with a chunk (2 copies), psislw's padded input, its copy, its
    # output and argsort (4 copies of 5 m)
    return scalars + 8 * (2 * m + 20 * m)


def _lae(a: Tensor, b: Tensor) -> Tensor:
    return torch.logaddexp(a, b)


class RunningWeights:
    """Summaries of K log weights for each of ``n`` points, fed in draw order by :meth:`add`
    (each row's draws 0..K−1 in consecutive chunks); ``ks``: where the K-curve is read (the
    estimates from the first k draws); ``tail``: keep what PSIS needs."""

    def __init__(self, n: int, num_samples: int, ks: Sequence[int] = (), tail: bool = True,
                 device: torch.device | str = "cpu") -> None:
        f64 = {"dtype": torch.float64, "device": device}
        self.n, self.num_samples, self.ks = n, num_samples, tuple(ks)
        self.lse = torch.full((n,), -math.inf, **f64)
        self.lse2 = torch.full((n,), -math.inf, **f64)
        self.mean = torch.zeros(n, **f64)
        self.m2 = torch.zeros(n, **f64)  # Σ (log w − mean)²
        self.low = torch.full((n,), math.inf, **f64)
        self.high = torch.full((n,), -math.inf, **f64)
        self.lse_at = torch.full((len(self.ks), n), -math.inf, **f64)
        self.mean_at = torch.zeros(len(self.ks), n, **f64)
        self.top = torch.full((n, tail_size(num_samples) + 1), -math.inf, **f64) if tail else None
        self.rest = torch.full((n,), -math.inf, **f64)  # log Σ w over draws not in top
        self.rest2 = torch.full((n,), -math.inf, **f64)

    def add(self, log_w: Tensor, lo: int, k_lo: int) -> None:
        """Draws ``k_lo .. k_lo + k − 1`` of rows ``lo .. lo + r − 1``: ``log_w`` ``[k, r]``."""
        w = log_w.detach().to(self.lse.device, torch.float64)
        k, rows = w.shape[0], slice(lo, lo + w.shape[1])
        for i, at in enumerate(self.ks):  # the curve reads the first `at` draws
            if k_lo < at <= k_lo + k:
                head = w[:at - k_lo]
                self.lse_at[i, rows] = _lae(self.lse[rows], torch.logsumexp(head, 0))
                self.mean_at[i, rows] = (self.mean[rows] * k_lo + head.sum(0)) / at
        self.lse[rows] = _lae(self.lse[rows], torch.logsumexp(w, 0))
        self.lse2[rows] = _lae(self.lse2[rows], torch.logsumexp(2 * w, 0))
        # Chan, Golub & LeVeque's pairwise update of the mean and the sum of squares
        mean_b, seen = w.mean(0), k_lo + k
        delta = mean_b - self.mean[rows]
        self.m2[rows] = self.m2[rows] + ((w - mean_b) ** 2).sum(0) + delta**2 * k_lo * k / seen
        self.mean[rows] = self.mean[rows] + delta * k / seen
        self.low[rows] = torch.minimum(self.low[rows], w.min(0).values)
        self.high[rows] = torch.maximum(self.high[rows], w.max(0).values)
        if self.top is not None:
            self._compete(w.T, rows)

    def _compete(self, w: Tensor, rows: slice) -> None:
        """The M + 1 largest of the buffer and the new draws ``w`` ``[r, k]`` stay; the
        others join the running sums."""
        pool = torch.cat([self.top[rows], w], dim=1)
        keep = torch.topk(pool, self.top.shape[1], dim=1).indices
        out = torch.ones_like(pool, dtype=torch.bool).scatter_(1, keep, False)
        dropped = pool.masked_fill(~out, -math.inf)
        self.rest[rows] = _lae(self.rest[rows], torch.logsumexp(dropped, 1))
        self.rest2[rows] = _lae(self.rest2[rows], torch.logsumexp(2 * dropped, 1))
        self.top[rows] = pool.gather(1, keep)

    # ------------------------------------------------------------------ what it says

    def log_mean_exp(self) -> Tensor:
        """log (1/K Σ_k w_k) ``[n]``."""
        return self.lse - math.log(self.num_samples)

    def curve(self) -> tuple[Tensor, Tensor]:
        """log mean w and mean log w from the first k draws, for each k of ``ks``:
        ``[len(ks), n]`` each."""
        ks = torch.tensor(self.ks, dtype=torch.float64, device=self.lse.device)[:, None]
        return self.lse_at - ks.log(), self.mean_at

    def std(self) -> Tensor:
        """Sample standard deviation of log w ``[n]`` (K − 1 in the denominator)."""
        return (self.m2 / max(self.num_samples - 1, 1)).sqrt()

    def relative_se(self) -> Tensor:
        """sd(w) / (mean(w) √K) ``[n]``: the delta-method standard error of log mean w."""
        k = self.num_samples
        if k < 2:
            return torch.full_like(self.lse, math.nan)
        ratio = torch.exp(self.lse2 - 2 * self.lse)  # Σ w² / (Σ w)², in [1/K, 1]
        return ((k * ratio - 1) / (k - 1)).clamp_min(0).sqrt()

    def psis(self) -> tuple[Tensor, Tensor]:
        """PSIS k̂ and ESS / K of each point ``[n]`` each, as
        :func:`~pyro_vae.evaluation.estimates.psis_diagnostics` gives them from all K."""
        import arviz

        if self.top is None:
            raise ValueError("RunningWeights(tail=False) keeps no tail for PSIS")
        top, m = self.top.cpu(), self.top.shape[1] - 1
        high = top.max(1).values
        shifted = top - high[:, None]
        fill = torch.clamp(shifted.min(1).values, max=LOG_TINY).nan_to_num(LOG_TINY, LOG_TINY,
                                                                           LOG_TINY) - 1.0
        width = 5 * (m + 1)
        padded = torch.cat([shifted, fill[:, None].expand(-1, width - m - 1)], dim=1)
        # min(width / 5, 3 √(width / r_eff)) = m − 1/2 makes psislw smooth the m largest
        reff = 9.0 * width / (m - 0.5) ** 2
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            smoothed, khat = arviz.psislw(padded.numpy().copy(), reff=reff)
        smoothed = torch.as_tensor(smoothed)
        y = smoothed[:, :m + 1] + (fill - smoothed[:, -1])[:, None]  # un-normalized
        rest = self.rest.cpu() - high
        total = _lae(torch.logsumexp(y, 1), rest)
        total2 = _lae(torch.logsumexp(2 * y, 1), self.rest2.cpu() - 2 * high)
        ess = torch.exp(2 * total - total2) / self.num_samples
        khat = torch.as_tensor(np.asarray(khat, dtype=np.float64))
        khat[self.low.cpu() == self.high.cpu()] = -math.inf  # all equal: no tail, a perfect q
        return khat, ess
