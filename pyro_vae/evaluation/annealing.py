"""The machinery of a log p(x) that can be believed: annealed importance sampling (AIS) with
Hamiltonian transitions, and its check by bidirectional Monte Carlo (BDMC), for any story
(the drivers :func:`~pyro_vae.evaluation.bounds.ais` and ``bdmc`` are in ``bounds``).

For each image x_n, C independent chains run through T + 1 distributions over the
unconstrained coordinates u of all continuous latent sites (constrained sites through
their bijections, ``z = T(u)``), on the geometric path from a start p_0 to the joint:

.. code-block:: text

    guide start:  log f_β(u) = (1 − β) log q(z | x) + β log p(x, z) + log |det ∂z/∂u|
    prior start:  log f_β(u) = log Σ_c p(z, c) p(x | z, c)^β    + log |det ∂z/∂u|
    u_0 ~ f_0 (exactly);  for t = 1..T:  log w += log f_βt(u_t−1) − log f_βt−1(u_t−1),
                                          u_t ~ HMC leaving f_βt invariant
    log p̂(x) = log (1/C Σ_chains w)        E[w] = p(x) (Neal 2001)

with β_t on the sigmoid schedule of Grosse, Ghahramani & Adams (2015). Discrete sites
marked ``infer={"enumerate": "parallel"}`` are summed exactly inside f (the evaluator's
enumeration, :func:`pyro_vae.evaluation.importance.particle_traces`): with the prior start the tempered
likelihood sits inside the sum over c, so f_0 is the prior of z with c summed out.

**Step sizes without bias.** Each HMC transition takes ``leapfrog`` steps with a step size
per image (shared by its C chains and by one β). The sizes come from a separate warm-up
pass: fresh chains anneal along a coarser schedule (``warmup_steps``) while each image's
step size follows its chains' acceptance rate towards ``target_accept``; the log step
sizes it records against β are then interpolated to the main pass's schedule and held
fixed. The main pass's chains are drawn anew, so its transitions never depend on its own
states, and every weight stays unbiased for p(x).

**BDMC** (Grosse et al. 2015; Wu et al. 2017): on images simulated from the model, x ~ p(x)
with the latents z* that made them, forward AIS is a stochastic lower bound of log p(x)
and AIS run backwards from z* (an exact posterior draw) gives w with E[w] = 1 / p(x), so
−log mean w is a stochastic upper bound. Their gap bounds the error of forward AIS on
such data: it tells how many steps real data need.

Everything runs on the device of x, a chunk of images at a time (all their C chains at
once), so memory is bounded by one chunk whatever N is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from pyro import poutine, validation_enabled
from pyro.distributions.util import sum_rightmost
from torch import Tensor

from pyro_vae.evaluation.importance import (
    check_cancelling,
    local_log_prob,
    particle_traces,
)
from pyro_vae.jit import JIT_ATOL, JIT_RTOL, LIBRARIES
from pyro_vae.programs import Batch, cuda_devices
from pyro_vae.registry import Registry
from pyro_vae.traces import (
    describe_latent,
    is_enumerated,
    is_latent,
    trace_program,
)

STARTS: Registry = Registry("AIS start")
SETTLE = 10
"""HMC transitions at β = 0 that settle each image's step size before the warm-up pass anneals."""


@dataclass(frozen=True)
class AISConfig:
    """How AIS anneals (see the module docstring)."""

    steps: int = 1000
    """T, the number of annealing steps (intermediate distributions after the start)."""
    chains: int = 16
    """C, independent chains per image; log p̂(x) is the log mean of their weights."""
    start: str = "guide"
    """Where the path starts: ``guide`` (q(z | x)) or ``prior`` (p(z))."""
    leapfrog: int = 10
    """Leapfrog steps per HMC transition."""
    target_accept: float = 0.65
    """The acceptance rate each image's step size is adapted towards in the warm-up pass."""
    warmup_steps: int = 100
    """Length of the warm-up pass's schedule (at most T), where step sizes are adapted."""
    initial_step_size: float = 0.05
    """Every image's step size where the warm-up pass begins."""
    sharpness: float = 4.0
    """δ of the sigmoid schedule β_t ∝ σ(δ (2t/T − 1)): larger spends more steps near 0 and 1."""
    point_chunk: int | None = None
    """Images annealed at once (each with C chains); None: about 4096 chains on a CPU, 65536 on a GPU."""
    chain_chunk: int | None = None
    """Chains of each image annealed at once (None: all C). Fewer than C split them into
    groups run one after another: the warm-up pass adapts the step sizes on the first group,
    and every group anneals with them, so the weights stay unbiased; memory then grows with
    the group, not with C."""
    jit: bool = True
    """Trace log f with ``torch.jit`` per chunk (checked against the untraced one; see :class:`Annealer`)."""

    def check(self) -> None:
        """Refuse settings that cannot run, naming the setting (ValueError)."""
        for name in ("steps", "chains", "leapfrog", "warmup_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"AIS {name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"AIS target_accept must lie in (0, 1), got {self.target_accept}")
        if self.chain_chunk is not None and self.chain_chunk < 1:
            raise ValueError(f"AIS chain_chunk must be at least 1, got {self.chain_chunk}")
        if self.point_chunk is not None and self.point_chunk < 1:
            raise ValueError(f"AIS point_chunk must be at least 1, got {self.point_chunk}")
        if not self.initial_step_size > 0:
            raise ValueError(f"AIS initial_step_size must be positive, got {self.initial_step_size}")
        STARTS.lookup(self.start)

    def key(self) -> str:
        """A short name of the settings that change the estimate (for caches)."""
        return (f"{self.start}-T{self.steps}-C{self.chains}-L{self.leapfrog}"
                f"-a{self.target_accept}-w{self.warmup_steps}")

    def chunk(self, device: torch.device) -> int:
        """Images annealed at once."""
        budget = 65536 if device.type == "cuda" else 4096
        return self.point_chunk or max(1, budget // self.group)

    @property
    def group(self) -> int:
        """Chains of an image annealed at once."""
        return min(self.chains, self.chain_chunk or self.chains)


def sigmoid_schedule(steps: int, sharpness: float = 4.0, dtype=torch.float64) -> Tensor:
    """β_0 = 0 < β_1 < … < β_T = 1 along a rescaled sigmoid (Grosse et al. 2015): ``[T + 1]``."""
    t = torch.linspace(-sharpness, sharpness, steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    beta = (s - s[0]) / (s[-1] - s[0])
    beta[0], beta[-1] = 0.0, 1.0
    return beta.to(dtype)


# ---------------------------------------------------------------------------- the target


@dataclass
class Terms:
    """The pieces of log f_β at a state, each ``[C, n]`` unless said: ``latent`` and
    ``likelihood`` (Σ log p over latent and observed sites, with the enumerated values in
    leading dims ``[*E, C, n]``), the start's ``log_q`` and the Jacobian ``log_det``."""

    latent: Tensor
    likelihood: Tensor
    log_q: Tensor | float
    log_det: Tensor


def sum_enumerated(t: Tensor) -> Tensor:
    """log Σ over the enumerated values in the leading dims of ``[*E, C, n]``: ``[C, n]``."""
    while t.dim() > 2:
        t = torch.logsumexp(t, dim=0)
    return t


class Problem:
    """The story on a chunk of images ``x`` ``[n, ...]`` (extras ``batch``), as a function
    of the unconstrained coordinates ``u`` ``[C, n, S]`` of its continuous latent sites."""

    def __init__(self, model: Callable, x: Tensor, batch: Batch, chains: int,
                 max_plate_nesting: int = 1) -> None:
        self.model, self.x, self.batch, self.chains = model, x, batch, chains
        self.nesting = max_plate_nesting
        trace = trace_program(model, x, batch)
        self.sites = tuple(describe_latent(name, site, x.shape[0], who="AIS")
                           for name, site in trace.nodes.items()
                           if is_latent(site) and not is_enumerated(site))
        if not self.sites:
            raise ValueError("AIS: the story has no continuous latent site to anneal over")
        self.size = sum(s.size for s in self.sites)

    def values(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Site values ``{name: [C, n, *event]}`` at u, and log |det ∂z/∂u| ``[C, n]``."""
        values, log_det = {}, torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device)
        for s, part in zip(self.sites, u.split([s.size for s in self.sites], dim=-1)):
            shaped = part.reshape(part.shape[:-1] + s.unconstrained_shape)
            value = s.transform(shaped)
            ld = s.transform.log_abs_det_jacobian(shaped, value)
            log_det = log_det + sum_rightmost(ld, ld.dim() - 2)
            values[s.name] = value
        return values, log_det

    def unconstrain(self, values: dict[str, Tensor]) -> Tensor:
        return torch.cat([s.unconstrain(values[s.name]) for s in self.sites], dim=-1)

    def model_trace(self, values: dict[str, Tensor], enumerate_discrete: bool = True
                    ) -> poutine.Trace:
        """The model run with its continuous latents held at ``values``, C draws per image."""
        program = poutine.condition(self.model, data=values)
        trace, _ = particle_traces(program, None, self.x, self.chains, self.nesting,
                                   kwargs=self.batch, enumerate_discrete=enumerate_discrete)
        trace.compute_log_prob()
        return trace

    def joint(self, values: dict[str, Tensor]) -> tuple[Tensor, Tensor, poutine.Trace]:
        """Σ log p of the latent sites and of the observed ones ``[*E, C, n]``."""
        trace = self.model_trace(values)
        n = self.x.shape[0]
        latent = local_log_prob(trace, n, lambda name, site: name in values or is_enumerated(site))
        observed = local_log_prob(trace, n, lambda name, site: site["is_observed"]
                                   and name not in values)
        return torch.as_tensor(latent), torch.as_tensor(observed), trace


# ---------------------------------------------------------------------------- the starts


class Start:
    """Where the path begins: exact draws from f_0, and log f_β from a state's terms."""

    def __init__(self, problem: Problem, guide: Callable | None) -> None:
        self.problem = problem

    def draw(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def log_q(self, values: dict[str, Tensor], trace: poutine.Trace) -> Tensor | float:
        return 0.0

    def log_f(self, terms: Terms, beta: float) -> Tensor:
        raise NotImplementedError


@STARTS.register("prior")
class PriorStart(Start):
    """f_β = Σ_c p(z, c) p(x | z, c)^β: the prior at β = 0 (normalized), the joint at 1."""

    def draw(self) -> dict[str, Tensor]:
        p = self.problem
        # Without enumeration the discrete sites are drawn too: z then follows its marginal.
        trace, _ = particle_traces(p.model, None, p.x, p.chains, p.nesting, kwargs=p.batch)
        return {s.name: trace.nodes[s.name]["value"] for s in p.sites}

    def log_f(self, terms: Terms, beta: float) -> Tensor:
        return sum_enumerated(terms.latent + beta * terms.likelihood) + terms.log_det


@STARTS.register("guide")
class GuideStart(Start):
    """f_β = q^(1−β) p(x, z)^β. Latent sites the guide leaves out start from the model's own
    conditionals, whose density joins q. A guide with one latent site is run once per chunk
    (its q depends on x alone); one with several is re-run at every state, conditioned on it
    (a later site's q may depend on an earlier site's value)."""

    def __init__(self, problem: Problem, guide: Callable | None) -> None:
        super().__init__(problem, guide)
        if guide is None:
            raise ValueError("AIS from the guide needs a guide; use the prior start")
        p = problem
        self.guide = guide
        _, trace = particle_traces(p.model, guide, p.x, p.chains, p.nesting, kwargs=p.batch)
        names = {s.name for s in p.sites}
        for name, site in trace.nodes.items():
            if is_latent(site) and (name not in names or site["infer"].get("is_auxiliary")):
                raise ValueError(f"AIS from the guide: the guide's site {name!r} is not a "
                                 f"continuous latent of the story (auxiliary, discrete or "
                                 f"enumerated), so q(z | x) has no density at a moving z; "
                                 f"use the prior start (--ais-start prior)")
        self.proposed = [name for name, site in trace.nodes.items() if is_latent(site)]
        self.cached = trace.nodes[self.proposed[0]]["fn"] if len(self.proposed) == 1 else None

    def draw(self) -> dict[str, Tensor]:
        p = self.problem
        trace, _ = particle_traces(p.model, self.guide, p.x, p.chains, p.nesting, kwargs=p.batch)
        trace.compute_log_prob()
        # Sites the guide leaves out come from the model; their density must not depend on
        # an enumerated site (it would be a mixture that the start cannot score).
        enumerated, _ = particle_traces(p.model, self.guide, p.x, p.chains, p.nesting,
                                        kwargs=p.batch, enumerate_discrete=True)
        enumerated.compute_log_prob()
        check_cancelling(enumerated, set(self.proposed))
        return {s.name: trace.nodes[s.name]["value"] for s in p.sites}

    def log_q(self, values: dict[str, Tensor], trace: poutine.Trace) -> Tensor:
        p, n = self.problem, self.problem.x.shape[0]
        from_model = local_log_prob(trace, n, lambda name, site: name in values
                                     and name not in self.proposed)
        if self.cached is not None:
            name = self.proposed[0]
            lq = self.cached.log_prob(values[name])
            return from_model + sum_rightmost(lq, lq.dim() - 2)
        held = {name: values[name] for name in self.proposed}
        _, guide_trace = particle_traces(p.model, poutine.condition(self.guide, data=held), p.x,
                                         p.chains, p.nesting, kwargs=p.batch)
        guide_trace.compute_log_prob()
        return from_model + local_log_prob(guide_trace, n, lambda name, site: name in held)

    def log_f(self, terms: Terms, beta: float) -> Tensor:
        joint = sum_enumerated(terms.latent + terms.likelihood)
        return (1.0 - beta) * terms.log_q + beta * joint + terms.log_det


# ---------------------------------------------------------------------------- HMC and annealing


class Annealer:
    """log f_β and its gradient at states u ``[C, n, S]`` of one chunk, and the HMC moves.

    log f is traced by ``torch.jit`` once per chunk (Pyro's handlers then cost nothing per
    step; the JIT guard of the training objectives applies: no tensor read as a Python value
    in the story's own code, and the traced values equal the untraced ones at two states),
    and run untraced where the trace cannot be trusted (``fallback`` says why)."""

    def __init__(self, problem: Problem, start: Start, leapfrog: int, jit: bool = True) -> None:
        self.problem, self.start, self.leapfrog = problem, start, leapfrog
        self.traced: Callable | None = None
        self.fallback: str | None = None if jit else "jit=False"
        self.tick: Callable[[], object] | None = None
        """Called after every annealing step (a progress bar)."""

    def terms(self, u: Tensor) -> Terms:
        values, log_det = self.problem.values(u)
        latent, likelihood, trace = self.problem.joint(values)
        return Terms(latent, likelihood, self.start.log_q(values, trace), log_det)

    def pair(self, u: Tensor, betas: Tensor) -> Tensor:
        """log f at β = ``betas[0]`` and ``betas[1]``: ``[2, C, n]``."""
        terms = self.terms(u)
        return torch.stack([self.start.log_f(terms, betas[0]), self.start.log_f(terms, betas[1])])

    def _compile(self, u: Tensor, betas: Tensor) -> None:
        """Trace :meth:`pair` and keep the trace if it passes the guard."""
        with validation_enabled(False), torch.random.fork_rng(devices=[]), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                traced = torch.jit.trace(self.pair, (u, betas), check_trace=False)
            except RuntimeError as err:  # e.g. a parameter outside the frozen modules
                self.fallback = f"torch.jit.trace failed: {str(err).splitlines()[0]}"
                return
        for w in caught:
            if issubclass(w.category, torch.jit.TracerWarning) and \
                    "Converting a tensor to a Python" in str(w.message) and \
                    not w.filename.startswith(LIBRARIES):
                self.fallback = f"the story reads a tensor's value at {w.filename}:{w.lineno}"
                return
        with torch.random.fork_rng(devices=cuda_devices(u)):
            probes = (u, u + 0.1 * torch.randn_like(u))  # the caller's draws stay as they were
        for probe in probes:
            with torch.no_grad(), torch.jit.optimized_execution(False):
                same = torch.allclose(traced(probe, betas), self.pair(probe, betas),
                                      rtol=JIT_RTOL, atol=JIT_ATOL, equal_nan=True)
            if not same:
                self.fallback = "the traced log f differs from the untraced one"
                return
        self.traced = traced

    def log_f_grad(self, u: Tensor, betas: Sequence[float]) -> tuple[list[Tensor], Tensor]:
        """log f_β(u) ``[C, n]`` for each of one or two β in ``betas`` (detached), and
        ∇_u log f at the last."""
        b = torch.tensor([betas[0], betas[-1]], dtype=u.dtype, device=u.device)
        if self.traced is None and self.fallback is None:
            self._compile(u.detach(), b)
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            if self.traced is not None:
                with torch.jit.optimized_execution(False):
                    values = self.traced(u, b)
            else:
                values = self.pair(u, b)
            grad, = torch.autograd.grad(values[1].sum(), u)
        values = values.detach()
        return ([values[1]] if len(betas) == 1 else [values[0], values[1]]), grad

    def hmc(self, u: Tensor, log_f: Tensor, grad: Tensor, beta: float, eps: Tensor
            ) -> tuple[Tensor, Tensor]:
        """One HMC transition at β with unit mass and step size ``eps`` ``[n]`` per image:
        the new states and whether each chain accepted ``[C, n]``."""
        step = eps.to(u.dtype)[None, :, None]
        p0 = torch.randn_like(u)
        q, p = u, p0 + 0.5 * step * grad
        for i in range(self.leapfrog):
            q = q + step * p
            (new_log_f,), new_grad = self.log_f_grad(q, [beta])
            p = p + (step if i < self.leapfrog - 1 else 0.5 * step) * new_grad
        log_ratio = new_log_f - log_f - 0.5 * (p.pow(2).sum(-1) - p0.pow(2).sum(-1))
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)  # a diverged trajectory is refused
        accept = torch.rand_like(log_ratio).log() < log_ratio
        return torch.where(accept[..., None], q, u), accept

    def anneal(self, u: Tensor, betas: Tensor, eps: Tensor | None, adapt: "Adaptation | None" = None
               ) -> tuple[Tensor, Tensor]:
        """Run the chains from u through ``betas`` ``[T + 1]`` (f_β0 invariant for u), with step
        sizes ``eps`` ``[T + 1, n]``, or adapted by ``adapt``: the log weights ``[C, n]``
        and each image's acceptance rate ``[n]``."""
        log_w = torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device)
        accepted = torch.zeros(u.shape[1], dtype=u.dtype, device=u.device)
        last = len(betas) - 1
        for t in range(1, last + 1):
            (before, now), grad = self.log_f_grad(u, [float(betas[t - 1]), float(betas[t])])
            log_w = log_w + (now - before)
            if self.tick is not None:
                self.tick()
            if t == last:  # the last transition would not change the weight
                break
            step = adapt.eps if adapt is not None else eps[t]
            u, accept = self.hmc(u, now, grad, float(betas[t]), step)
            rate = accept.to(u.dtype).mean(0)
            accepted = accepted + rate
            if adapt is not None:
                adapt.update(float(betas[t]), rate)
        return log_w, accepted / max(last - 1, 1)


@dataclass
class Adaptation:
    """Each image's step size follows its acceptance rate: log ε += (rate − target), recorded
    against β for the main pass to interpolate."""

    eps: Tensor
    target: float
    betas: list[float] = field(default_factory=list)
    log_eps: list[Tensor] = field(default_factory=list)

    def update(self, beta: float, rate: Tensor) -> None:
        self.eps = self.eps * torch.exp(rate - self.target)
        self.betas.append(beta)
        self.log_eps.append(self.eps.log())

    def schedule(self, betas: Tensor) -> Tensor:
        """Step sizes ``[len(betas), n]`` at ``betas``, by linear interpolation of log ε in β
        (held constant beyond the recorded range)."""
        known = torch.tensor(self.betas, dtype=torch.float64, device=self.eps.device)
        table = torch.stack(self.log_eps).double()  # [W, n]
        b = betas.to(known).clamp(known[0], known[-1])
        hi = torch.searchsorted(known, b).clamp(1, len(known) - 1)
        lo = hi - 1
        span = (known[hi] - known[lo]).clamp_min(1e-12)
        frac = ((b - known[lo]) / span).clamp(0, 1)[:, None]
        return torch.exp(table[lo] * (1 - frac) + table[hi] * frac).to(self.eps.dtype)


def warmup(annealer: Annealer, cfg: AISConfig, steps: int) -> Adaptation:
    """The separate adaptation pass: fresh chains, ``min(warmup_steps, steps)`` steps, each
    image's step size adapted as they go; ``SETTLE`` transitions at β = 0 settle ε first."""
    p = annealer.problem
    u = p.unconstrain(annealer.start.draw())
    dtype = u.dtype
    adapt = Adaptation(torch.full((p.x.shape[0],), cfg.initial_step_size, dtype=dtype,
                                  device=u.device), cfg.target_accept)
    for _ in range(SETTLE):
        (log_f,), grad = annealer.log_f_grad(u, [0.0])
        u, accept = annealer.hmc(u, log_f, grad, 0.0, adapt.eps)
        adapt.update(0.0, accept.to(dtype).mean(0))
        if annealer.tick is not None:
            annealer.tick()
    annealer.anneal(u, sigmoid_schedule(min(cfg.warmup_steps, steps), cfg.sharpness, dtype),
                    None, adapt)
    return adapt
