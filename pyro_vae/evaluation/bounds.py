"""log p(x) by AIS, per image and as a curve over the number of steps, and its BDMC check
on simulated images: the drivers of :mod:`~pyro_vae.evaluation.annealing`'s machinery
(see there for the method), a chunk of images at a time. Each chunk draws from its own seed
(:func:`pyro_vae.programs.unit_seed` of the seed and its index) and, given a
:class:`~pyro_vae.partial.Partial`, is written to disk when done and read back instead of
annealed again, so a stopped run continues to the numbers it would have given."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.evaluation.annealing import (
    SETTLE,
    STARTS,
    AISConfig,
    Annealer,
    Problem,
    sigmoid_schedule,
    warmup,
)
from pyro_vae.evaluation.chunks import probe_cell_bytes
from pyro_vae.evaluation.estimates import Estimate
from pyro_vae.evaluation.importance import images_bar
from pyro_vae.evaluation.running import RunningWeights
from pyro_vae.memory import BudgetError, MemoryBudget, format_size, memory_budget
from pyro_vae.partial import Arrays, Partial, as_arrays
from pyro_vae.programs import Batch, frozen, seeded, unit_seed
from pyro_vae.traces import (
    image_site,
    is_observed,
    log_mean_exp,
    slice_rows,
    trace_program,
)


def chain_stderr(log_w: Tensor) -> Tensor:
    """Standard error of log (1/C Σ w_c) over the C chains ``[C, n]`` (delta method:
    sd(w) / (√C · mean w)); NaN for one chain."""
    c = log_w.shape[0]
    if c < 2:
        return torch.full(log_w.shape[1:], float("nan"), dtype=log_w.dtype)
    w = torch.exp(log_w - log_w.max(0).values)
    return w.std(0) / (math.sqrt(c) * w.mean(0))


@dataclass(frozen=True)
class AISResult:
    """What :func:`ais` measured on N images: ``estimate`` (per image log p̂(x) and its mean
    ± s.e. over images, nats and bits/dim), the s.e. of each image's log p̂ over its chains
    ``chain_stderr`` ``[N]`` and its HMC ``acceptance`` rate ``[N]``. The chains' weights are
    reduced as each group of chains finishes, so none is held."""

    estimate: Estimate
    chain_stderr: Tensor
    acceptance: Tensor
    config: AISConfig
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"steps": self.config.steps, "chains": self.config.chains,
                "start": self.config.start, "leapfrog": self.config.leapfrog,
                "target_accept": self.config.target_accept,
                "warmup_steps": min(self.config.warmup_steps, self.config.steps),
                "step_size_scheme": "separate warm-up pass, then fixed",
                "estimate": self.estimate.summary(),
                "chain_stderr_mean": float(self.chain_stderr.mean()),
                "acceptance_mean": float(self.acceptance.mean()),
                "acceptance_min": float(self.acceptance.min()),
                "num_points": int(self.acceptance.numel()), "seconds": self.seconds}


@dataclass
class _Pass:
    """Per image log mean w ``[n]``, its chain s.e. and acceptance chunks of one T, and its
    seconds."""

    log_p: list[Tensor] = field(default_factory=list)
    chain_se: list[Tensor] = field(default_factory=list)
    acceptance: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, arrays: Arrays, name: str) -> None:
        """The chunk's arrays ``<name>_log_p``, ``_chain_se``, ``_acceptance`` and
        ``_seconds`` (or ``_log_w`` ``[C, n]``, as partial results kept before the chains
        were reduced in groups)."""
        if f"{name}_log_w" in arrays:
            log_w = torch.as_tensor(arrays[f"{name}_log_w"])
            log_p, se = log_mean_exp(log_w), chain_stderr(log_w)
        else:
            log_p, se = (torch.as_tensor(arrays[f"{name}_{k}"]) for k in ("log_p", "chain_se"))
        self.log_p.append(log_p)
        self.chain_se.append(se)
        self.acceptance.append(torch.as_tensor(arrays[f"{name}_acceptance"]))
        self.seconds += float(arrays[f"{name}_seconds"])

    def result(self, data_dim: int, cfg: AISConfig, sign: float = 1.0) -> AISResult:
        """Forward AIS: log p̂ = log mean w. Reverse (``sign`` −1): w estimates 1 / p(x), and
        −log mean w is the stochastic upper bound."""
        per_point = sign * torch.cat(self.log_p)
        return AISResult(Estimate.of("ais", per_point, data_dim), torch.cat(self.chain_se),
                         torch.cat(self.acceptance), cfg, self.seconds)


def _anneal_groups(groups: list[Annealer], start: Callable[[Annealer], Tensor], betas: Tensor,
                   eps: Tensor, name: str) -> dict[str, Any]:
    """Each group's chains from ``start(annealer)`` through ``betas``, reduced as they end."""
    begin, n = time.perf_counter(), groups[0].problem.x.shape[0]
    chains = sum(a.problem.chains for a in groups)
    sums = RunningWeights(n, chains, tail=False, device=betas.device)
    accepted, k_lo = 0.0, 0
    for annealer in groups:
        log_w, acceptance = annealer.anneal(start(annealer), betas, eps)
        sums.add(log_w, 0, k_lo)
        k_lo += log_w.shape[0]
        accepted = accepted + acceptance.double() * log_w.shape[0]
    return {f"{name}_log_p": sums.log_mean_exp(), f"{name}_chain_se": sums.relative_se(),
            f"{name}_acceptance": accepted / chains,
            f"{name}_seconds": time.perf_counter() - begin}


def _anneal_chunk(groups: list[Annealer], cfg: AISConfig, steps: Sequence[int],
                  exact: dict[str, Tensor] | None = None) -> Arrays:
    """One chunk of images, its chains in ``groups`` (one :class:`Annealer` per group, all
    C of an image's chains together): one warm-up pass on the first group (its step sizes
    serve every group and T, read off against β), then forward AIS at each T in ``steps``
    (``forward<i>_*``, see :meth:`_Pass.add`) and, given exact posterior draws ``exact``
    ``{name: [n, ...]}``, AIS backwards from them (``reverse<i>_*``)."""
    adapt = warmup(groups[0], cfg, max(steps))

    def drawn(a: Annealer) -> Tensor:
        return a.problem.unconstrain(a.start.draw())

    def given(a: Annealer) -> Tensor:
        return a.problem.unconstrain({k: v.expand(a.problem.chains, *v.shape)
                                      for k, v in exact.items()})

    out: dict[str, Any] = {}
    for i, t in enumerate(steps):
        betas = sigmoid_schedule(t, cfg.sharpness, adapt.eps.dtype)
        out |= _anneal_groups(groups, drawn, betas, adapt.schedule(betas), f"forward{i}")
        if exact is not None:
            down = betas.flip(0)
            out |= _anneal_groups(groups, given, down, adapt.schedule(down), f"reverse{i}")
    return as_arrays(out)


def _modules(*programs: Callable | None) -> list[nn.Module]:
    return [p for p in programs if isinstance(p, nn.Module)]


@dataclass(frozen=True)
class _Runs:
    """How the chunks of one AIS or BDMC are seeded, kept and shown: chunk i draws from
    ``unit_seed(seed, name, i)`` (the caller's stream for seed None), is kept in
    ``partial`` when given, and advances a bar over the images named ``name``."""

    name: str
    seed: int | None
    partial: Partial | None = None
    progress: bool | None = False

    def check(self) -> None:
        if self.partial is not None and self.seed is None:
            raise ValueError(f"{self.name}: partial results need a seed (with seed=None every "
                             f"chunk draws from the caller's random stream, which cannot be replayed)")


def _run(model: Callable, guide: Callable | None, x: Tensor, batch: Batch, cfg: AISConfig,
         steps: Sequence[int], nesting: int, runs: _Runs, exact: dict[str, Tensor] | None = None
         ) -> tuple[list[_Pass], list[_Pass]]:
    """Forward (and with ``exact``, reverse) passes at each T, a chunk of images at a time
    (read back from ``runs.partial`` where it holds them)."""
    runs.check()
    forward, reverse = [_Pass() for _ in steps], [_Pass() for _ in steps]
    size, n = cfg.chunk(x.device), x.shape[0]
    # Annealing steps per chunk and group: the warm-up pass's (first group only), then each T
    # forward (and backward).
    work = (SETTLE + min(cfg.warmup_steps, max(steps))) / groups_of(cfg) \
        + sum(steps) * (1 if exact is None else 2)
    with frozen(*_modules(model, guide)), images_bar(n, runs.progress, runs.name) as bar:
        for index, lo in enumerate(range(0, n, size)):
            unit = f"chunk-{index:05d}"
            saved = runs.partial.load(unit) if runs.partial is not None else None
            if saved is None:
                rows, fields = x[lo:lo + size], slice_rows(batch, lo, lo + size)
                seed = None if runs.seed is None else unit_seed(runs.seed, runs.name, index)
                with seeded(seed, x.device):
                    groups = _groups(model, guide, rows, fields, cfg, nesting,
                                     lambda r=len(rows): bar.update(r / work / groups_of(cfg)))
                    saved = _anneal_chunk(groups, cfg, steps,
                                          None if exact is None else slice_rows(exact, lo, lo + size))
                if runs.partial is not None:
                    saved = runs.partial.save(unit, saved)
            bar.update(min(n, lo + size) - bar.n)
            for i in range(len(steps)):
                forward[i].add(saved, f"forward{i}")
                if exact is not None:
                    reverse[i].add(saved, f"reverse{i}")
    return forward, reverse


def groups_of(cfg: AISConfig) -> int:
    """How many groups an image's C chains are annealed in."""
    return -(-cfg.chains // cfg.group)


def _groups(model: Callable, guide: Callable | None, x: Tensor, batch: Batch, cfg: AISConfig,
            nesting: int, tick: Callable[[], object]) -> list[Annealer]:
    """An :class:`Annealer` per group of ``cfg.group`` chains (the last has the rest), one
    built per distinct size (a problem and its traced log f serve every group of its size)."""
    sizes = [cfg.group] * (cfg.chains // cfg.group) + [cfg.chains % cfg.group] * bool(
        cfg.chains % cfg.group)
    built: dict[int, Annealer] = {}
    for size in dict.fromkeys(sizes):
        problem = Problem(model, x, batch, size, nesting)
        built[size] = Annealer(problem, STARTS.lookup(cfg.start)(problem, guide), cfg.leapfrog,
                               cfg.jit)
        built[size].tick = tick
    return [built[size] for size in sizes]


@torch.no_grad()
def check_ais(model: Callable, guide: Callable | None, data: Tensor, cfg: AISConfig,
          batch: Batch | None = None, max_plate_nesting: int = 1) -> None:
    """Refuse, before any long run, settings or a story that AIS cannot anneal (ValueError
    naming the setting or site): the story and start are built on the first two rows."""
    cfg.check()
    rows, fields = data[:2], slice_rows(batch or {}, 0, 2)
    with frozen(*_modules(model, guide)), torch.random.fork_rng(devices=[]):
        problem = Problem(model, rows, fields, 1, max_plate_nesting)
        STARTS.lookup(cfg.start)(problem, guide).draw()


def ais_plan(model: Callable, guide: Callable | None, data: Tensor, cfg: AISConfig,
             memory: MemoryBudget | None = None, batch: Batch | None = None,
             max_plate_nesting: int = 1) -> tuple[AISConfig, dict[str, Any]]:
    """``cfg`` with the images and the chains annealed at once (``point_chunk``,
    ``chain_chunk``) chosen to fit ``memory`` (default: the device's budget), as many as
    given or by default (4096 chains' worth on a CPU, 65536 on a GPU), and what the plan
    costs. The bytes per chain and image are measured on a probe HMC gradient (untraced,
    the backward pass counted as much again). BudgetError (a ValueError) when one chain for
    one image does not fit, or when a size given does not."""
    memory = memory or memory_budget(data.device)
    batch = batch or {}

    def call(k: int, r: int) -> tuple[poutine.Trace]:
        problem = Problem(model, data[:r], slice_rows(batch, 0, r), k, max_plate_nesting)
        start = STARTS.lookup(cfg.start)(problem, guide)
        u = problem.unconstrain(start.draw())
        Annealer(problem, start, cfg.leapfrog, jit=False).log_f_grad(u, [0.5, 0.5])
        return (problem.model_trace(problem.values(u)[0]),)

    with frozen(*_modules(model, guide)):
        cell = 2 * probe_cell_bytes(call, points=min(2, len(data)))
    cells = memory.bytes // cell
    if cells < 1:
        raise BudgetError(f"AIS: one chain for one image needs about {format_size(cell)}, more "
                          f"than the memory budget of {memory}; raise --memory-budget")
    group = cfg.chain_chunk or min(cfg.chains, cells)
    default = 65536 if data.device.type == "cuda" else 4096
    images = cfg.point_chunk or max(1, min(default, cells) // group)
    if group * images > cells:
        raise BudgetError(f"AIS: {images} images × {group} chains at once need about "
                          f"{format_size(group * images * cell)}, more than the memory budget of "
                          f"{memory}; choose a smaller --ais-chunk or --chain-chunk, or raise "
                          f"--memory-budget")
    planned = dataclasses.replace(cfg, chain_chunk=group, point_chunk=images)
    return planned, {**memory.summary(), "chains_per_call": group, "images_per_call": images,
                     "bytes_per_chain_and_image": cell,
                     "working_bytes_bound": group * images * cell}


def describe_ais_plan(plan: dict[str, Any], chains: int) -> str:
    """One line: the chains and images annealed at once, and the bound."""
    groups = -(-chains // plan["chains_per_call"])
    return (f"memory: AIS anneals {plan['images_per_call']} images × "
            f"{plan['chains_per_call']} chains at once ({groups} group{'s' * (groups > 1)} of "
            f"chains per image); working memory about {format_size(plan['working_bytes_bound'])} "
            f"of a {format_size(plan['budget_bytes'])} budget ({plan['budget_source']})")


def default_steps_grid(steps: int) -> tuple[int, ...]:
    """T/16, T/4 and T (distinct, at least 1): the AIS-against-T curve."""
    return tuple(sorted({max(1, steps // 16), max(1, steps // 4), steps}))


@torch.no_grad()
def ais_curve(model: Callable, guide: Callable | None, data: Tensor, cfg: AISConfig = AISConfig(),
              steps: Sequence[int] | None = None, *, seed: int | None = 0,
              batch: Batch | None = None, max_plate_nesting: int = 1,
              partial: Partial | None = None, progress: bool | None = False
              ) -> tuple[AISResult, ...]:
    """log p(x) of each row of ``data`` ``[N, ...]`` by annealed importance sampling, at each
    T in ``steps`` (default: ``cfg.steps`` alone), each T with its own independent chains.

    Args:
        model, guide: Pyro programs ``model(x, **batch)`` (the story contract); the guide is
            read only with ``cfg.start == "guide"``.
        data: the images, on the device to compute on.
        cfg: C, the start and the HMC settings (:class:`AISConfig`); its ``chunk`` of images
            is annealed at once, from its own seed (``unit_seed(seed, "ais", i)``).
        seed: seeds every draw without touching the caller's random state; None uses it.
        batch: per-row extras ``{name: [N, ...]}`` (labels ``y``), sliced with ``data``.
        partial: where each finished chunk is written, and read back instead of annealed
            again (so a stopped run continues to the same numbers).
        progress: a bar over the images: shown, hidden, or (None) only on a terminal.
    """
    cfg.check()
    steps = tuple(steps or (cfg.steps,))
    forward, _ = _run(model, guide, data, batch or {}, cfg, steps, max_plate_nesting,
                      _Runs("ais", seed, partial, progress))
    dim = int(data[0].numel())
    return tuple(f.result(dim, dataclasses.replace(cfg, steps=t)) for f, t in zip(forward, steps))


def ais(model: Callable, guide: Callable | None, data: Tensor, cfg: AISConfig = AISConfig(),
        **kwargs: Any) -> AISResult:
    """:func:`ais_curve` at T = ``cfg.steps`` alone."""
    return ais_curve(model, guide, data, cfg, (cfg.steps,), **kwargs)[0]


@dataclass(frozen=True)
class BDMCResult:
    """The sandwich on N simulated images, per T in ``steps``: forward AIS (``lower``, a
    stochastic lower bound of log p(x)) and reverse AIS from the exact latents (``upper``,
    a stochastic upper bound), and the per-image gap upper − lower."""

    steps: tuple[int, ...]
    lower: tuple[AISResult, ...]
    upper: tuple[AISResult, ...]
    data: Tensor
    """The simulated images ``[N, ...]``."""

    def gap(self, i: int) -> Estimate:
        """upper − lower per image at ``steps[i]``, its mean ± s.e. over images."""
        lo, up = self.lower[i].estimate, self.upper[i].estimate
        return Estimate.of("bdmc_gap", up.per_point - lo.per_point, 1)

    def summary(self) -> dict[str, Any]:
        rows = [{"steps": t, "lower": lo.estimate.summary(), "upper": up.estimate.summary(),
                 "gap_mean": self.gap(i).mean, "gap_stderr": self.gap(i).stderr,
                 "acceptance_mean": float(lo.acceptance.mean())}
                for i, (t, lo, up) in enumerate(zip(self.steps, self.lower, self.upper))]
        return {"num_points": int(self.lower[0].acceptance.numel()),
                "chains": self.lower[0].config.chains, "start": self.lower[0].config.start,
                "per_steps": rows, "gap_mean": rows[-1]["gap_mean"]}


@torch.no_grad()
def simulate(model: Callable, template: Tensor, batch: Batch | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """x ~ p(x) shaped like ``template`` ``[N, ...]`` (its extras ``batch`` kept), with the
    continuous latents that made it ``{name: [N, ...]}`` (exact draws from p(z | x))."""
    image = image_site(trace_program(model, template, batch), template)
    trace = trace_program(poutine.uncondition(model), template, batch)
    observed = [name for name, site in trace.nodes.items()
                if site["type"] == "sample" and (is_observed(site)
                                                 or site["infer"].get("was_observed"))]
    if observed != [image]:
        raise ValueError(f"BDMC simulates the image site {image!r} alone, but the story "
                         f"observes {observed}: the others would be drawn anew too")
    latents = {s.name: trace.nodes[s.name]["value"]
               for s in Problem(model, template, batch or {}, 1).sites}
    return trace.nodes[image]["value"], latents


def bdmc(model: Callable, guide: Callable | None, template: Tensor, cfg: AISConfig = AISConfig(),
         steps: Sequence[int] | None = None, *, seed: int | None = 0, batch: Batch | None = None,
         max_plate_nesting: int = 1, partial: Partial | None = None,
         progress: bool | None = False) -> BDMCResult:
    """Bidirectional Monte Carlo on ``len(template)`` images simulated from the model
    (rows of ``template`` ``[N, ...]`` and its extras give their shape and labels), at each
    T in ``steps`` (default :func:`default_steps_grid` of ``cfg.steps``). The images are
    simulated from ``seed`` itself, each chunk is annealed from ``unit_seed(seed, "bdmc", i)``;
    ``partial`` and ``progress`` as for :func:`ais_curve`."""
    cfg.check()
    steps = tuple(steps or default_steps_grid(cfg.steps))
    batch = batch or {}
    with seeded(seed, template.device):
        x, latents = simulate(model, template, batch)
    with torch.no_grad():
        forward, reverse = _run(model, guide, x, batch, cfg, steps, max_plate_nesting,
                                _Runs("bdmc", seed, partial, progress), latents)
    dim = int(x[0].numel())
    configs = [dataclasses.replace(cfg, steps=t) for t in steps]
    return BDMCResult(steps, tuple(f.result(dim, c) for f, c in zip(forward, configs)),
                      tuple(r.result(dim, c, sign=-1.0) for r, c in zip(reverse, configs)), x)
