"""Training objectives: Pyro ELBO estimators, built from a :class:`TrainConfig`.

Every entry is one of Pyro's own losses; pyro-vae never hand-writes the ELBO.
Each builder returns an object with ``differentiable_loss(model, guide, x, beta)``.

- ``elbo``: ``Trace_ELBO``, the reparameterized Monte Carlo ELBO.
- ``meanfield``: ``TraceMeanField_ELBO``. It uses the analytic KL(q ‖ p) where
  ``kl_divergence`` has one registered for the pair (e.g. a diagonal guide and
  the standard normal prior) and falls back, site by site, on the Monte Carlo
  estimate otherwise (mixture, VampPrior and flow priors; the IAF guide). No
  prior/guide pair is refused: the fallback is exact in expectation.
- ``iwae``: ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``,
  the importance-weighted bound with K = ``particles`` samples per image.
- ``*-jit``: the same losses traced with ``torch.jit``. Pyro's own ``Jit*``
  classes feed parameters to the trace from the global param store, which
  pyro-vae does not use (their gradients would miss the modules' parameters),
  so :class:`Jit` traces the loss with the modules' parameters as inputs.
  ``meanfield-jit`` traces :class:`TraceableMeanField` (same value and gradient).
"""

from __future__ import annotations

import warnings

import torch
from pyro import validation_enabled
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from torch import Tensor, nn

from pyro_vae.config import TrainConfig
from pyro_vae.evaluate import log_mean_exp
from pyro_vae.registry import Registry

OBJECTIVES: Registry = Registry("objective")

# Latents sit in the single data plate; particles may add one more dimension.
MAX_PLATE_NESTING = 1


class IWAE(RenyiELBO):
    """``RenyiELBO`` with α = 0: log (1/K) Σ_k p(x, z_k) / q(z_k | x) per image, z_k ~ q.

    Pyro's ``RenyiELBO`` offers ``loss`` and ``loss_and_grads`` only; this adds
    ``differentiable_loss`` for a plain torch loop, from the same traces and
    the same log-weights. It needs a reparameterized guide, as all of ours are.
    """

    def __init__(self, num_particles: int) -> None:
        super().__init__(alpha=0.0, num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=MAX_PLATE_NESTING)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """Minus the bound, summed over the images of the batch (a scalar)."""
        weights = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_w = log_w + torch_sum(site["log_prob"], sum_dims)
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample":
                    if not is_identically_zero(site["score_parts"].score_function):
                        raise ValueError(f"the iwae objective needs a reparameterized guide; "
                                         f"site {name!r} is not")
                    log_w = log_w - torch_sum(site["log_prob"], sum_dims)
            weights.append(log_w)
        # Vectorized particles come as one [K, N] tensor; otherwise one [N] tensor per particle.
        log_w = weights[0] if self.vectorize_particles and self.num_particles > 1 \
            else torch.stack(weights)
        return -log_mean_exp(log_w, dim=0).sum()


class SurrogateLoss:
    """Mixin: ``differentiable_loss`` returns the surrogate loss alone, so ``torch.jit`` can trace it.

    Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` return ``loss + (surrogate −
    surrogate.item())``, where ``loss`` is summed from ``.item()`` floats. Under a trace
    those floats are frozen at the values of the tracing call: gradients stay exact, but
    the reported loss then carries a constant of the last bits (``TraceMeanField`` even a
    wrong value). With reparameterized sites, as in every guide here, the surrogate *is*
    the loss, with the same gradient, so this returns it directly.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + surrogate / self.num_particles
        return loss


class TraceableTraceELBO(SurrogateLoss, Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` traces without trace-time constants."""


class TraceableMeanField(SurrogateLoss, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose ``differentiable_loss`` can be traced (see :class:`SurrogateLoss`)."""


class Jit:
    """``objective.differentiable_loss`` traced by ``torch.jit.trace`` once per batch shape.

    The model's and guide's parameters are inputs of the trace, so gradients
    reach them exactly as without JIT; β is an input too, so KL warm-up does
    not retrace. Under a fixed seed the loss and gradients equal the untraced
    objective's (tests/test_objectives.py checks it).
    """

    def __init__(self, objective: ELBO) -> None:
        self.objective = objective
        self._traced: dict = {}

    def differentiable_loss(self, model: nn.Module, guide: nn.Module, x: Tensor,
                            beta: float = 1.0) -> Tensor:
        from pyro_vae.fit import unique_parameters  # fit imports this module

        key = (id(model), id(guide), tuple(x.shape), x.device, x.dtype)
        # torch.full passes β to a fill kernel: no host-to-device copy per step on CUDA.
        beta_t = torch.full((), beta, dtype=x.dtype, device=x.device)
        if key not in self._traced:
            params = unique_parameters(*(m for m in (model, guide) if isinstance(m, nn.Module)))
            self._traced[key] = (self._trace(model, guide, params, x, beta_t), params)
        traced, params = self._traced[key]
        # The profiling executor's rewrites change the order of float operations (the fit
        # drifts from the untraced one) and measured slower here (~10 % on MNIST, 784-400-50).
        with torch.jit.optimized_execution(False):
            return traced(*params, x, beta_t)

    def _trace(self, model, guide, params: list[Tensor], x: Tensor, beta: Tensor):
        def loss(*inputs: Tensor) -> Tensor:
            return self.objective.differentiable_loss(model, guide, inputs[-2], inputs[-1])

        # Validation checks would compare traced values in Python; the checks
        # still run whenever the untraced objective is used.
        # Pyro's shape checks and torch.jit's own deprecation notice say nothing
        # actionable here: the trace is keyed by shape, so shape-dependent branches hold.
        with validation_enabled(False), torch.random.fork_rng(devices=[]), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.trace(loss, (*params, x, beta), check_trace=False)


@OBJECTIVES.register("elbo")
def trace_elbo(cfg: TrainConfig) -> ELBO:
    """``Trace_ELBO``: the single-sample (or ``particles``-sample) reparameterized ELBO."""
    return Trace_ELBO(num_particles=cfg.particles, vectorize_particles=cfg.particles > 1,
                      max_plate_nesting=MAX_PLATE_NESTING)


@OBJECTIVES.register("meanfield")
def trace_mean_field_elbo(cfg: TrainConfig) -> ELBO:
    """``TraceMeanField_ELBO``: the analytic KL where one is registered, else Monte Carlo."""
    return TraceMeanField_ELBO(num_particles=cfg.particles, vectorize_particles=cfg.particles > 1,
                               max_plate_nesting=MAX_PLATE_NESTING)


@OBJECTIVES.register("iwae")
def iwae(cfg: TrainConfig) -> ELBO:
    """The importance-weighted bound with K = ``particles`` (K = 1 is refused: it is the ELBO)."""
    if cfg.particles < 2:
        raise ValueError("the iwae objective needs particles >= 2 (--particles K): with one "
                         "particle the importance-weighted bound is the plain ELBO")
    return IWAE(cfg.particles)


@OBJECTIVES.register("elbo-jit")
def jit_trace_elbo(cfg: TrainConfig) -> Jit:
    return Jit(TraceableTraceELBO(num_particles=cfg.particles, vectorize_particles=cfg.particles > 1,
                                  max_plate_nesting=MAX_PLATE_NESTING))


@OBJECTIVES.register("meanfield-jit")
def jit_trace_mean_field_elbo(cfg: TrainConfig) -> Jit:
    return Jit(TraceableMeanField(num_particles=cfg.particles,
                                  vectorize_particles=cfg.particles > 1,
                                  max_plate_nesting=MAX_PLATE_NESTING))


@OBJECTIVES.register("iwae-jit")
def jit_iwae(cfg: TrainConfig) -> Jit:
    return Jit(iwae(cfg))


def build_objective(cfg: TrainConfig):
    """The loss named by ``cfg.objective``; refuses impossible settings with a sentence."""
    return OBJECTIVES.lookup(cfg.objective)(cfg)
