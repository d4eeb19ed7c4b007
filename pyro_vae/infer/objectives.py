"""Training objectives: Pyro ELBO estimators, built from a :class:`TrainConfig`.

Every entry is one of Pyro's own losses; pyro-vae never hand-writes the ELBO.
Each builder returns an :class:`Objective` (or :class:`Jit`) whose
``differentiable_loss(model, guide, x, beta=β, batch=...)`` runs
``model(x, **batch)`` and ``guide(x, **batch)`` with every latent site weighted by β
(:class:`~pyro_vae.programs.LatentScale`, applied from outside the story).

- ``elbo``: ``Trace_ELBO``, the reparameterized Monte Carlo ELBO.
- ``meanfield``: ``TraceMeanField_ELBO``. It uses the analytic KL(q ‖ p) where
  ``kl_divergence`` has one registered for the pair (e.g. a diagonal guide and
  the standard normal prior) and falls back, site by site, on the Monte Carlo
  estimate otherwise (mixture, VampPrior and flow priors; the IAF guide). No
  prior/guide pair is refused: the fallback is exact in expectation.
- ``enum``: ``TraceEnum_ELBO``, for stories with discrete latents summed out by
  enumeration (``infer={"enumerate": "parallel"}``).
- ``iwae``: ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``,
  the importance-weighted bound with K = ``particles`` samples per image.
- ``*-jit``: the same losses traced with ``torch.jit``. Pyro's own ``Jit*``
  classes feed parameters to the trace from the global param store, which
  pyro-vae does not use (their gradients would miss the modules' parameters),
  so :class:`Jit` traces the loss with the modules' parameters as inputs.
  ``meanfield-jit`` traces :class:`TraceableMeanField` (same value and gradient).
  A trace records one path through the program's Python code, so :class:`Jit`
  first checks it (see there) and falls back to the untraced loss, with a note,
  when the program's control flow depends on values.
- ``elbo-auto`` (the default): ``elbo-jit``; a fit long enough to repay compiling
  switches to ``elbo-compile``'s whole-step program (:func:`pyro_vae.infer.auto_wait`).
- ``elbo-compile``: ``Trace_ELBO`` recorded by ``make_fx`` and compiled by
  ``torch.compile`` (:class:`Compiled`), checked and falling back as ``*-jit`` does;
  seconds of compiling per batch shape buy faster steps on long fits. In a fit the
  whole step (batch, loss, gradients, Adam) is one compiled program where it can be
  (:mod:`pyro_vae.fused`); the compiled loss serves the other cases.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from pyro import validation_enabled
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from torch import Tensor, nn

from pyro_vae.config import TrainConfig
from pyro_vae.jit import (
    JIT_CHECK_CALLS,
    LIBRARIES,
    checked_against,
    kept_buffers,
    quiet_compiler,
    warn_fallback,
    without_float_copies,
)
from pyro_vae.programs import Batch, cuda_devices, scale_latents, unique_parameters
from pyro_vae.registry import Registry
from pyro_vae.traces import log_mean_exp

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


class Objective:
    """A Pyro ELBO applied to a story contract's pair: ``model(x, **batch)``, ``guide(x, **batch)``,
    every latent site weighted by β from outside."""

    def __init__(self, elbo: ELBO) -> None:
        self.elbo = elbo

    def differentiable_loss(self, model: Callable, guide: Callable, x: Tensor, *,
                            beta: float | Tensor = 1.0, batch: Batch | None = None) -> Tensor:
        """Minus the objective summed over the rows of ``x`` (a scalar with gradients)."""
        return self.elbo.differentiable_loss(scale_latents(model, beta), scale_latents(guide, beta),
                                             x, **(batch or {}))


# The first calls of a traced loss are checked against the untraced one (different batches
# and draws, so that a branch on values shows up as a disagreement).
# Traced and untraced run the same float operations in the same order (optimized execution
# is off), so they agree to rounding; a wrong branch differs by far more.
# Code whose tensor reads are known to be shape reads, not branches on values.


class Jit(Objective):
    """``differentiable_loss`` traced by ``torch.jit.trace`` once per batch shape.

    The model's and guide's parameters are inputs of the trace, so gradients
    reach them exactly as without JIT; β and the per-row extras are inputs too,
    so KL warm-up does not retrace. Under a fixed seed the loss and gradients
    equal the untraced objective's (tests/infer/test_objectives.py checks it).

    A trace is one path through the program's Python code. It is used only
    after two checks: no ``TracerWarning`` came from the story's own code while
    tracing (a tensor read as a Python bool or number), and on the first
    ``JIT_CHECK_CALLS`` calls the traced loss and gradients equal the untraced
    ones from the same random state. Otherwise the untraced loss is used from then
    on, and a :class:`JitFallbackWarning` says why (``fallback`` keeps the reason).
    """

    recording = "torch.jit trace"
    """What the fallback warning calls the recorded loss."""

    def __init__(self, elbo: ELBO) -> None:
        super().__init__(elbo)
        self._traced: dict = {}
        self._checks_left = JIT_CHECK_CALLS
        self.fallback: str | None = None
        self.where: tuple[str, int] | None = None
        """The story's file and line a fallback's reason names, if it names one."""

    def differentiable_loss(self, model: Callable, guide: Callable, x: Tensor, *,
                            beta: float | Tensor = 1.0, batch: Batch | None = None) -> Tensor:
        batch = batch or {}
        if self.fallback is not None:
            return super().differentiable_loss(model, guide, x, beta=beta, batch=batch)
        keys = tuple(sorted(batch))
        values = tuple(batch[k] for k in keys)
        key = (id(model), id(guide), keys, *((tuple(t.shape), t.dtype) for t in (x, *values)),
               x.device)
        # torch.full passes β to a fill kernel: no host-to-device copy per step on CUDA.
        beta_t = torch.full((), float(beta), dtype=x.dtype, device=x.device)
        if key not in self._traced:
            modules = [m for m in (model, guide) if isinstance(m, nn.Module)]
            params = unique_parameters(*modules)
            with kept_buffers(modules) as written:
                traced, reason = self._trace(model, guide, params, keys, (x, beta_t, *values))
            if reason is None and written:
                reason = (f"the program updates the buffer {written[0]!r} in place (such as "
                          f"batch norm's running statistics), which a recording would not replay")
            if reason is not None:
                return self._fall_back(reason, model, guide, x, beta, batch)
            self._traced[key] = (traced, params)
        traced, params = self._traced[key]
        inputs = (*params, x, beta_t, *values)
        if self._checks_left == 0:
            return self._call(traced, inputs)
        self._checks_left -= 1
        loss, reason = checked_against(lambda: super(Jit, self).differentiable_loss(
            model, guide, x, beta=beta_t, batch=batch), lambda: self._call(traced, inputs), params)
        return loss if reason is None else self._fall_back(reason, model, guide, x, beta, batch)

    def _fall_back(self, reason: str, model, guide, x, beta, batch) -> Tensor:
        self.fallback = reason
        warn_fallback(f"{self.recording} not used ({reason}); training with the untraced "
                      f"loss, which is always correct", self.where)
        return super().differentiable_loss(model, guide, x, beta=beta, batch=batch)

    def _loss(self, model, guide, n: int, keys: tuple[str, ...]) -> Callable[..., Tensor]:
        """The untraced loss as a function of (n parameters, x, β, the extras ``keys``)."""
        def loss(*inputs: Tensor) -> Tensor:
            x, beta, *values = inputs[n:]
            return Objective.differentiable_loss(self, model, guide, x, beta=beta,
                                                 batch=dict(zip(keys, values)))
        return loss

    def _call(self, traced, inputs: tuple[Tensor, ...]) -> Tensor:
        # The profiling executor's rewrites change the order of float operations (the fit
        # drifts from the untraced one) and measured slower here (~10 % on MNIST, 784-400-50).
        with torch.jit.optimized_execution(False):
            return traced(*inputs)

    def _trace(self, model, guide, params: list[Tensor], keys: tuple[str, ...],
               example: tuple[Tensor, ...]):
        """The traced loss, or ``None`` and the reason it cannot be trusted."""
        loss = self._loss(model, guide, len(params), keys)
        # Validation checks would compare traced values in Python; the checks still run
        # whenever the untraced objective is used. torch.jit's deprecation notice says
        # nothing actionable here.
        with validation_enabled(False), torch.random.fork_rng(devices=[]), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(loss, (*params, *example), check_trace=False)
        for w in caught:
            # Constants folded into the trace (torch.tensor(...)) are harmless; a tensor read
            # as a Python bool or number means a branch on values.
            if issubclass(w.category, torch.jit.TracerWarning) and \
                    "Converting a tensor to a Python" in str(w.message) and \
                    not w.filename.startswith(LIBRARIES):
                self.where = (w.filename, w.lineno)
                return None, (f"the program reads a tensor's value in Python at "
                              f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}")
        return traced, None


class Compiled(Jit):
    """``differentiable_loss`` recorded once per batch shape as an FX graph of aten
    operations by ``make_fx`` (through Pyro's Python, as ``torch.jit.trace`` does) and
    compiled by ``torch.compile``: inductor fuses the element-wise work of the model, the
    guide and the log-densities into a few loops, and AOTAutograd compiles the backward.

    Random draws stay torch's own (``fallback_random``), so under a fixed seed the loss
    and gradients equal the untraced objective's up to the fused float ordering, and the
    first ``JIT_CHECK_CALLS`` calls are checked against it as :class:`Jit` checks its
    trace. Compiling takes seconds (about 13 s for the 784-400-50 VAE on this 2-core
    CPU) once per batch shape, so it pays off on long fits. If the graph cannot be
    recorded (a value read in Python) or compiled (no C++ compiler), the untraced loss is
    used, with a :class:`JitFallbackWarning`.

    :func:`~pyro_vae.infer.fit` goes further where it can: one program for the whole step
    (:class:`~pyro_vae.infer.FusedStep`); this compiled loss is for the fits it does not
    take (several processes, streamed images, another optimizer) and for callers of
    ``differentiable_loss``.
    """

    recording = "compiled loss"

    def _call(self, compiled, inputs: tuple[Tensor, ...]) -> Tensor:
        return compiled(*inputs)

    def _trace(self, model, guide, params: list[Tensor], keys: tuple[str, ...],
               example: tuple[Tensor, ...]):
        from torch.fx.experimental.proxy_tensor import make_fx

        loss = self._loss(model, guide, len(params), keys)
        with validation_enabled(False), torch.random.fork_rng(devices=cuda_devices(*example)), \
                without_float_copies(self.elbo):
            try:
                graph = make_fx(loss)(*params, *example)
            except RuntimeError as err:
                return None, f"make_fx could not record it: {str(err).splitlines()[0]}"
            compiled = torch.compile(graph, dynamic=False, options={"fallback_random": True})
            try:  # compile now, so that a failure falls back instead of stopping the fit
                # Without donated buffers: the checked calls differentiate the loss twice.
                with torch._functorch.config.patch(donated_buffer=False), quiet_compiler():
                    compiled(*params, *example)
            except Exception as err:  # noqa: BLE001  (any compiler failure means: fall back)
                return None, f"torch.compile failed: {str(err).splitlines()[0]}"
        return compiled, None


def _particles(cfg: TrainConfig) -> dict:
    """The estimator options every ELBO here shares: ``particles`` draws per image, as one
    vectorized draw when there are several; latents in the single data plate."""
    return dict(num_particles=cfg.particles, vectorize_particles=cfg.particles > 1,
                max_plate_nesting=MAX_PLATE_NESTING)


@OBJECTIVES.register("elbo")
def trace_elbo(cfg: TrainConfig) -> "Objective":
    """``Trace_ELBO``: the single-sample (or ``particles``-sample) reparameterized ELBO."""
    return Objective(Trace_ELBO(**_particles(cfg)))


@OBJECTIVES.register("meanfield")
def trace_mean_field_elbo(cfg: TrainConfig) -> "Objective":
    """``TraceMeanField_ELBO``: the analytic KL where one is registered, else Monte Carlo."""
    return Objective(TraceMeanField_ELBO(**_particles(cfg)))


@OBJECTIVES.register("enum")
def trace_enum_elbo(cfg: TrainConfig) -> Objective:
    """``TraceEnum_ELBO``: discrete sites marked ``infer={"enumerate": "parallel"}`` are summed
    out exactly (in model or guide) instead of sampled; otherwise the same as ``elbo``."""
    return Objective(TraceEnum_ELBO(**_particles(cfg)))


@OBJECTIVES.register("iwae")
def iwae(cfg: TrainConfig) -> "Objective":
    """The importance-weighted bound with K = ``particles`` (K = 1 is refused: it is the ELBO)."""
    return Objective(_iwae(cfg))


def _iwae(cfg: TrainConfig) -> IWAE:
    if cfg.particles < 2:
        raise ValueError("the iwae objective needs particles >= 2 (--particles K): with one "
                         "particle the importance-weighted bound is the plain ELBO")
    return IWAE(cfg.particles)


@OBJECTIVES.register("elbo-jit")
def jit_trace_elbo(cfg: TrainConfig) -> Jit:
    return Jit(TraceableTraceELBO(**_particles(cfg)))


class Auto(Jit):
    """The default objective (``elbo-auto``): :class:`Jit`'s traced loss, which
    :func:`~pyro_vae.infer.fit` replaces by the whole step compiled as one program once a
    fit is long enough to repay compiling it (:func:`pyro_vae.infer.auto_wait`)."""


@OBJECTIVES.register("elbo-auto")
def auto_trace_elbo(cfg: TrainConfig) -> Auto:
    """``elbo-jit``, and ``elbo-compile``'s program from the step where it pays off."""
    return Auto(TraceableTraceELBO(**_particles(cfg)))


@OBJECTIVES.register("elbo-compile")
def compiled_trace_elbo(cfg: TrainConfig) -> Compiled:
    """``elbo`` compiled by ``torch.compile`` (see :class:`Compiled`): for long fits."""
    return Compiled(TraceableTraceELBO(**_particles(cfg)))


@OBJECTIVES.register("iwae-compile")
def compiled_iwae(cfg: TrainConfig) -> Compiled:
    """``iwae`` compiled by ``torch.compile`` (see :class:`Compiled`): for long fits."""
    return Compiled(_iwae(cfg))


@OBJECTIVES.register("meanfield-jit")
def jit_trace_mean_field_elbo(cfg: TrainConfig) -> Jit:
    return Jit(TraceableMeanField(**_particles(cfg)))


@OBJECTIVES.register("iwae-jit")
def jit_iwae(cfg: TrainConfig) -> Jit:
    return Jit(_iwae(cfg))


def build_objective(cfg: TrainConfig):
    """The loss named by ``cfg.objective``; refuses impossible settings with a sentence."""
    return OBJECTIVES.lookup(cfg.objective)(cfg)
