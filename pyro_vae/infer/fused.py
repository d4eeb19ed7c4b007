"""A whole training step as one compiled program (``--objective elbo-compile``).

:class:`~pyro_vae.infer.Compiled` compiles the loss alone; around it, the
eager step still gathers and binarizes the batch, runs the backward graph and
steps Adam tensor by tensor. Here ``make_fx`` records all of it, with the
parameters, Adam's moments and the training images as inputs: the row gather,
the fresh binarization, Pyro's ELBO for ``model(x, **batch)`` and
``guide(x, **batch)``, its gradients (``torch.autograd.grad`` inside the
recording), gradient clipping and Adam's update, written in place. inductor
then fuses the element-wise work of the backward pass into Adam's update, as
XLA does for a jitted NumPyro step.

It is the same update as the eager step (``torch.optim.Adam``, ``clip_grad_norm_``)
with the same random draws (torch's own random kernels, ``fallback_random``), so
under a seed a fit matches ``--objective elbo`` up to float rounding. The first
``JIT_CHECK_CALLS`` steps are checked against the eager step from the same state;
a disagreement, or a program that cannot be recorded or compiled, falls back to
the eager step with a :class:`~pyro_vae.infer.JitFallbackWarning`. Every
precision setting applies: the program is recorded and run under it.

The program is compiled for the fit's batch size; other batches (the last of an
epoch) take the untraced eager step.

The default objective, ``elbo-auto``, takes ``elbo-jit``'s traced step and switches to
this program where compiling it pays (:func:`auto_wait`): compiling cannot overlap the
steps (on a thread, Python's lock slowed the eager steps 3×), so it is bought only once
a fit has shown it is long.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from pyro import validation_enabled
from torch import Tensor

from pyro_vae.infer.objectives import Auto, Compiled, Objective
from pyro_vae.infer.precision import PRECISIONS
from pyro_vae.infer.session import FitSession
from pyro_vae.jit import (
    JIT_CHECK_CALLS,
    first_difference,
    kept_buffers,
    quiet_compiler,
    warn_fallback,
    without_float_copies,
)
from pyro_vae.programs import cuda_devices
from pyro_vae.state import DivergenceError
from pyro_vae.traces import index_rows

# The step the engine takes otherwise: (rows, β, where, objective) -> the batch loss.
EagerStep = Callable[[Tensor, float, Callable[[], str], Objective], float]
# The clip_grad_norm_ convention: the norm is divided by (norm + this).
CLIP_EPS = 1e-6
# elbo-auto compiles after AUTO_AFTER steps of a fit (20-40 s of traced steps on a 2-core
# CPU, about what compiling costs cold; a fit that ends sooner pays nothing) when AUTO_LEFT
# more are planned. Compiled steps saved 1.8-3.6 ms each there and a cold compile took 21 s
# (2 threads) to 39 s (1 thread), so at the threshold the worst case measured about breaks
# even and the others gain (benchmarks/README.md, "The default, elbo-auto").
AUTO_AFTER, AUTO_LEFT = 2_000, 20_000


def auto_wait(done: int, planned: int) -> int | None:
    """Steps ``elbo-auto`` takes traced before compiling, in a fit that has taken ``done``
    of its ``planned`` steps (counted over epochs, so a resumed fit switches where the
    uninterrupted one does); ``None``: too few steps left to repay compiling."""
    wait = max(AUTO_AFTER - done, 0)
    return wait if planned - done - wait >= AUTO_LEFT else None


def unfusable(session: FitSession, objective: Objective) -> str | None:
    """Why this fit's steps cannot be one compiled program, or ``None`` when they can."""
    opt = session.optimizer
    group = opt.param_groups[0] if len(opt.param_groups) == 1 else None
    reasons = {
        "the objective is not a compiled one (elbo-compile, iwae-compile, elbo-auto)":
            not isinstance(objective, (Compiled, Auto)),
        "several processes fit together": session.ddp is not None,
        "the training images are streamed": not isinstance(session.data.train.x, Tensor),
        "the optimizer is not plain Adam": type(opt) is not torch.optim.Adam or group is None
        or any(group.get(k) for k in ("amsgrad", "maximize", "weight_decay", "differentiable")),
    }
    return next((why for why, bad in reasons.items() if bad), None)


class FusedStep:
    """The fit's Adam step on rows ``index`` ``[B]`` of the training images, compiled.

    ``__call__`` returns the batch loss (summed over rows), or ``None`` when the
    program does not take the batch (another size, or after a fallback): then the
    caller takes its eager step with :attr:`rest`, the objective for such batches.
    ``eager(rows, β, where, objective)`` is that step (for the checks); ``status(text)``
    shows what is happening (the fit's progress bar), ``""`` when done. The first
    ``wait`` calls are left to the caller (``elbo-auto``'s traced steps).
    """

    def __init__(self, session: FitSession, objective: Compiled | Auto, eager: EagerStep,
                 status: Callable[[str], None] = lambda text: None, wait: int = 0) -> None:
        self.session, self.objective, self.eager, self.status = session, objective, eager, status
        self.wait = wait
        self.slots = _adam_slots(session.optimizer)
        self.betas = session.optimizer.param_groups[0]["betas"]
        self.eps = session.optimizer.param_groups[0]["eps"]
        self.size = min(session.config.batch_size, len(session.data.train))
        # Recorded, compiled and run under the fit's precision (bf16's layers are wrapped for
        # the whole fit, so the program records their bfloat16 products as they are).
        self.precision = lambda: PRECISIONS[session.config.precision].forward(session.device)
        self.program: Callable | None = None
        self.checks_left = JIT_CHECK_CALLS
        self.fallback: str | None = None
        self.taken = 0

    @property
    def rest(self) -> Objective:
        """The objective for the batches the program does not take: the objective itself
        (``elbo-auto``'s traced loss; the compiled loss after a fallback) or, for a compiled
        one, the untraced ELBO (the compiled loss would compile again for their shape)."""
        compiled = isinstance(self.objective, Compiled) and self.fallback is None
        return Objective(self.objective.elbo) if compiled else self.objective

    def __call__(self, index: Tensor, beta: float, where: Callable[[], str]) -> float | None:
        if self.wait:
            self.wait -= 1
            return None
        if self.fallback is not None or index.numel() != self.size:
            return None
        inputs = self._inputs(index, beta)
        if self.program is None:
            self.status("compiling the training step")
            try:
                self.program, reason = self._compile(inputs)
            finally:
                self.status("")
            if reason is not None:
                return self._fall_back(reason)
        if self.checks_left:
            self.checks_left -= 1
            return self._checked(inputs, index, beta, where)
        return self._run(inputs, where)

    def _inputs(self, index: Tensor, beta: float) -> tuple[Tensor, ...]:
        """Adam's slots; each parameter's step size and √(bias correction 2) for this step
        (``[n]`` each, computed once here: inside the program inductor would redo them per
        element; on the device, so no copy to or from the host); β; the images ``[N, D]``,
        ``index`` and the rows' extras."""
        lr = self.session.optimizer.param_groups[0]["lr"]
        n, (b1, b2) = len(self.slots) // 4, self.betas
        device = self.slots[0].device
        counts = torch.stack(self.slots[3 * n:]).double() + 1
        step_size = (lr / (1 - b1 ** counts)).float()
        bc2_sqrt = (1 - b2 ** counts).sqrt().float()
        fields = index_rows(self.session.data.train.fields(), index)
        return (*self.slots, step_size, bc2_sqrt, torch.full((), float(beta), device=device),
                self.session.data.train.x, index, *(fields[k] for k in sorted(fields)))

    def _run(self, inputs: tuple[Tensor, ...], where: Callable[[], str]) -> float:
        with torch.no_grad(), self.precision():
            loss, norm = self.program(*inputs)
        value = float(loss)
        # Unlike the eager step, the update has happened; the fit rolls a divergence back
        # to the end of the last good epoch, Adam's moments included, either way.
        if not math.isfinite(value):
            raise DivergenceError(f"the loss became {value} at {where()}")
        if self.session.config.clip_norm is not None and not math.isfinite(float(norm)):
            raise DivergenceError(f"the gradient norm became {float(norm)} at {where()}")
        self.taken += 1
        return value

    def _fall_back(self, reason: str) -> None:
        self.fallback = reason
        what = getattr(self.rest, "recording", "untraced loss")
        warn_fallback(f"the training step is not compiled as one program ({reason}); "
                      f"training on step by step with the {what}")
        return None

    def _compile(self, inputs: tuple[Tensor, ...]) -> tuple[Callable | None, str | None]:
        """The recorded and compiled step, or ``None`` and why not. Recording runs the step
        for real and so does compiling: Adam's slots and the random state are put back."""
        saved = [t.clone() for t in self.slots]
        with validation_enabled(False), torch.random.fork_rng(devices=cuda_devices(*inputs)), \
                without_float_copies(self.objective.elbo), self.precision():
            try:
                graph, reason = self._record(inputs)
            finally:
                _copy_into(self.slots, saved)
            if reason is not None:
                return None, reason
            program = torch.compile(graph, dynamic=False, options={"fallback_random": True})
            try:  # compile now, so that a failure falls back instead of stopping the fit
                with torch.no_grad(), quiet_compiler():
                    program(*inputs)
            except Exception as err:  # noqa: BLE001  (any compiler failure means: fall back)
                return None, f"torch.compile failed: {str(err).splitlines()[0]}"
            finally:
                _copy_into(self.slots, saved)
        return program, None

    def _record(self, inputs: tuple[Tensor, ...]) -> tuple[Callable | None, str | None]:
        """The step as an FX graph, or ``None`` and why it cannot be one. A story that updates
        a module's buffer in place (batch norm's running statistics) is refused: the
        program would read the buffer as a constant of the recording."""
        from torch.fx.experimental.proxy_tensor import make_fx

        keys = tuple(sorted(self.session.data.train.fields()))
        with kept_buffers([self.session.modules()]) as written:
            try:
                graph = make_fx(self._step_function(keys))(*inputs)
            except RuntimeError as err:
                return None, f"make_fx could not record it: {str(err).splitlines()[0]}"
        if written:
            return None, (f"the program updates the buffer {written[0]!r} in place (such as "
                          f"batch norm's running statistics)")
        return graph, None

    def _step_function(self, keys: tuple[str, ...]) -> Callable[..., tuple[Tensor, Tensor]]:
        """The step as a function of :meth:`_inputs`: returns the batch loss and the gradient
        norm (0 unless clipping), and writes the new parameters and moments in place."""
        session, n = self.session, len(self.slots) // 4
        params = self.slots[:n]
        clip = session.config.clip_norm

        def step(*inputs: Tensor) -> tuple[Tensor, Tensor]:
            step_size, bc2_sqrt, beta, images, index, *values = inputs[4 * n:]
            x = session.data.draw(images[index])
            loss = Objective.differentiable_loss(self.objective, session.model, session.guide, x,
                                                 beta=beta, batch=dict(zip(keys, values)))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            norm, grads = _clipped(grads, clip)
            with torch.no_grad():
                self._adam(grads, inputs[:4 * n], step_size, bc2_sqrt)
            return loss.detach(), norm
        return step

    def _adam(self, grads: list[Tensor | None], slots: tuple[Tensor, ...], step_size: Tensor,
              bc2_sqrt: Tensor) -> None:
        """``torch.optim.Adam``'s update in place; a parameter without a gradient is left
        as it is, as Adam leaves it."""
        n = len(grads)
        (b1, b2), eps = self.betas, self.eps
        for i, g in enumerate(grads):
            if g is None:
                continue
            p, m, v, t = slots[i], slots[n + i], slots[2 * n + i], slots[3 * n + i]
            t.add_(1)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(_adam_step(m, v, step_size[i], bc2_sqrt[i], eps))

    def _checked(self, inputs: tuple[Tensor, ...], index: Tensor, beta: float,
                 where: Callable[[], str]) -> float:
        """The program's step and the eager step from the same slots and random state; the
        eager one stands (the draws are the same, so the fit goes on as if the program had
        run). The program's loss, moments and step counts must equal the eager step's (the
        moments hold the gradients), and its parameters must be Adam's update of its own
        moments: Adam turns gradients below their rounding noise into steps of up to ±lr,
        so parameters are not compared across two roundings of the gradient. A
        disagreement means the program is not used again."""
        n = len(self.slots) // 4
        saved = [t.clone() for t in self.slots]
        with torch.random.fork_rng(devices=cuda_devices(*inputs)):
            with torch.no_grad(), self.precision():
                loss, _ = self.program(*inputs)
            got = [t.clone() for t in self.slots]
        _copy_into(self.slots, saved)
        value = self.eager(index, beta, where, Objective(self.objective.elbo))
        expected = self._updated(saved, got, inputs[4 * n], inputs[4 * n + 1])
        reason = _disagreement([float(loss), *got], [value, *expected, *self.slots[n:]], n)
        if reason is not None:
            self._fall_back(reason)
        return value

    def _updated(self, before: list[Tensor], after: list[Tensor], step_size: Tensor,
                 bc2_sqrt: Tensor) -> list[Tensor]:
        """Adam's update of the parameters ``before`` with the moments of ``after`` (slots as
        :func:`_adam_slots` orders them); a parameter whose count did not move stays."""
        n = len(before) // 4
        out = []
        for i in range(n):
            m, v, moved = after[n + i], after[2 * n + i], bool(after[3 * n + i] != before[3 * n + i])
            step = _adam_step(m, v, step_size[i], bc2_sqrt[i], self.eps)
            out.append(before[i] - step if moved else before[i])
        return out


def _adam_step(m: Tensor, v: Tensor, step_size: Tensor, bc2_sqrt: Tensor, eps: float) -> Tensor:
    """Adam's change to a parameter from its moments (subtracted): step size · m / (√v̂ + ε)."""
    return step_size * m / (v.sqrt() / bc2_sqrt + eps)


def _adam_slots(opt: torch.optim.Adam) -> list[Tensor]:
    """Every parameter, then every first moment, second moment and step count, as
    ``opt.state`` holds them (made as ``torch.optim.Adam`` makes them before its first step)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        if not opt.state[p]:
            opt.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
    return params + [opt.state[p][k] for k in ("exp_avg", "exp_avg_sq", "step") for p in params]


def _clipped(grads, clip: float | None) -> tuple[Tensor, list[Tensor | None]]:
    """``clip_grad_norm_`` on gradients as values: the total 2-norm and the gradients
    scaled down to ``clip`` when above it."""
    present = [g for g in grads if g is not None]
    if clip is None or not present:
        return torch.zeros((), device=present[0].device if present else None), list(grads)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    coef = torch.clamp(clip / (norm + CLIP_EPS), max=1.0)
    return norm, [None if g is None else g * coef for g in grads]


def _copy_into(targets: list[Tensor], values: list[Tensor]) -> None:
    with torch.no_grad():
        for t, v in zip(targets, values):
            t.copy_(v)


def _disagreement(got: list, expected: list, n: int) -> str | None:
    """Why the program's step (loss, then the slots) differs from the eager one, or ``None``.
    The moments hold the gradient itself (m = (1 - β1)·g after a first step), so they are
    compared as :class:`~pyro_vae.infer.Jit` compares gradients."""
    names = ["loss"] + [f"{what} {i}" for what in ("parameter", "first moment", "second moment",
                                                   "step count") for i in range(n)]
    return first_difference(names, expected, got, "the eager step's")
