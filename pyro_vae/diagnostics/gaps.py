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
from pyro_vae.evaluation import particle_traces, probe_cell_bytes, running_weights
from pyro_vae.memory import BudgetError, MemoryBudget, format_size, memory_budget
from pyro_vae.programs import Batch, as_program


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
                   proposal: JointGuide | None = None, batch: Batch | None = None,
                   memory: MemoryBudget | None = None, particle_chunk: int | None = None) -> Gaps:
    """ELBOs of the amortized and local guides on ``x`` ``[N, D]`` (per-row extras ``batch``),
    and log p(x), each from K = ``samples`` importance weights of the evaluator, reduced as
    they are drawn (:func:`~pyro_vae.evaluation.running_weights`): memory grows with the
    draws per program call (``particle_chunk``, default :func:`gap_chunk`'s for ``memory``),
    not with K.

    log p(x) is the IWAE bound with ``proposal`` (default: the local optimum).
    :func:`diagnose` passes a :class:`PosteriorProposal` fitted to the NUTS draws: a
    diagonal Gaussian is too narrow a proposal in many dimensions (its k̂ exceeds 0.7),
    and would understate log p(x) and with it the approximation gap.
    """
    model, guide, batch = as_program(model), as_program(guide), dict(batch or {})
    # A pointwise guide holds one distribution per row of x, so the evaluator must not split
    # the rows; about 4096 draws per program call keeps each call cache-sized on a CPU.
    particle_chunk = particle_chunk or gap_chunk(model, guide, x, batch, memory)["particle_chunk"]
    chunks = {"point_chunk": len(x), "batch": batch, "particle_chunk": particle_chunk}
    sums = {name: running_weights(model, q, x, samples, **chunks)
            for name, q in (("amortized", guide), ("local", local))}
    sums["log_px"] = (sums["local"] if proposal is None
                      else running_weights(model, proposal, x, samples, **chunks))
    khat = {name: r.psis()[0].float() for name, r in sums.items()}
    se = {name: (r.std() / math.sqrt(samples)).float().cpu() for name, r in sums.items()}
    return Gaps(sums["log_px"].log_mean_exp().float().cpu(), sums["amortized"].mean.float().cpu(),
                sums["local"].mean.float().cpu(), se["amortized"], se["local"],
                khat["amortized"], khat["local"], khat["log_px"],
                sums["log_px"].relative_se().float().cpu())


def gap_chunk(model: Callable, guide: Callable, x: Tensor, batch: Batch,
              memory: MemoryBudget | None = None) -> dict[str, int]:
    """Draws of all N points per program call of the gap table: about
    ``PARTICLE_BUDGET`` / N, fewer where ``memory`` (default: the device's budget) says so,
    and what a call costs; BudgetError when one draw for the N points does not fit."""
    memory = memory or memory_budget(x.device)

    def call(k: int, r: int) -> tuple:
        traces = particle_traces(model, guide, x, k, kwargs=batch, enumerate_discrete=True)
        for trace in traces:
            trace.compute_log_prob()
        return traces

    per_draw = probe_cell_bytes(call, draws=2, points=len(x)) * len(x)
    if per_draw > memory.bytes:
        raise BudgetError(f"diagnose: one draw for the {len(x)} points needs about "
                          f"{format_size(per_draw)}, more than the memory budget of {memory}; "
                          f"choose fewer --points or raise --memory-budget")
    particles = max(1, min(PARTICLE_BUDGET // len(x), memory.bytes // per_draw))
    return {"particle_chunk": particles, "bytes_per_draw": per_draw,
            "working_bytes_bound": particles * per_draw}
