"""The inference gaps (Cremer, Li & Duvenaud 2018): approximation = log p(x) − ELBO(q*),
amortization = ELBO(q*) − ELBO(q_φ), per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from pyro_vae.diagnostics.config import PARTICLE_BUDGET
from pyro_vae.diagnostics.posteriors import JointGuide
from pyro_vae.evaluation import log_importance_weights, psis_diagnostics
from pyro_vae.programs import Batch, as_program
from pyro_vae.traces import log_mean_exp


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
