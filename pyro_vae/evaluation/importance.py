"""How P(x) = ∫ p(x | z) p(z) dz is actually computed: the importance weights of any story,
and :func:`evaluate`, which reduces them to three estimates of log p(x) with PSIS
diagnostics (:mod:`~pyro_vae.evaluation.estimates`), a chunk of points at a time.

For each data point x_n and K draws z_k the evaluator forms log importance weights

.. code-block:: text

    guided:  log w_kn = log p(x_n, z_k) − log q(z_k | x_n),   z_k ~ q(z | x_n)
             (latent sites that the guide leaves out are drawn from the model and cancel)
    prior:   log v_kn = log p(x_n | z_k),                      z_k ~ p(z)

It works for any Pyro model/guide pair, called as ``model(x, **batch)`` and
``guide(x, **batch)`` with x ``[N, ...]`` (the story contract), whose latent and observed sites all
sit inside one data plate over the rows of x (at dim -1 when
``max_plate_nesting=1``). The K draws are a vectorized particle plate wrapped
around both programs; log-densities are summed over sites but the data
dimension is kept, unlike Pyro's ``vectorized_importance_weights``, which
collapses it. Everything runs under ``torch.no_grad()`` on the device of ``x``.

**Chunks that can be redone.** :func:`evaluate` draws for ``hold_points`` points at a time,
each such chunk from its own seed (:func:`pyro_vae.programs.unit_seed` of the seed and the
chunk's index), so a chunk's numbers do not depend on the chunks before it; with a
:class:`~pyro_vae.partial.Partial` each finished chunk is written to disk and read back
instead of drawn again, and a stopped evaluation continues to the numbers it would have
given uninterrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.evaluation.chunks import ChunkPlan, plan_chunks, probe_cell_bytes
from pyro_vae.evaluation.estimates import (
    ESTIMATORS,
    Estimate,
    Evaluation,
    PSISDiagnostics,
    curve_of,
    k_grid,
    merge_psis,
)
from pyro_vae.evaluation.running import RunningWeights, point_bytes
from pyro_vae.memory import MemoryBudget, memory_budget
from pyro_vae.partial import Arrays, Partial, as_arrays
from pyro_vae.pixels import Pixels, check_binary, scored_pixels
from pyro_vae.programs import cuda_devices, seeded, unit_seed
from pyro_vae.traces import (
    is_enumerated,
    is_latent,
    particle_plate,
    slice_rows,
    trace_program,
)


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
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    out = torch.empty(num_samples, x.shape[0], device=x.device, dtype=dtype)

    def keep(log_w: Tensor, lo: int, k_lo: int) -> None:
        out[k_lo:k_lo + log_w.shape[0], lo:lo + log_w.shape[1]] = log_w

    _feed(model, guide, x, batch or {}, num_samples, chunks, keep)
    return out


@torch.no_grad()
def running_weights(model: Callable, guide: Callable | None, x: Tensor, num_samples: int, *,
                    particle_chunk: int | None = None, point_chunk: int | None = None,
                    max_plate_nesting: int = 1, batch: dict[str, Tensor] | None = None,
                    tail: bool = True) -> RunningWeights:
    """The weights of :func:`log_importance_weights` reduced as they are drawn (the same
    draws in the same order): a :class:`~pyro_vae.evaluation.running.RunningWeights` of the
    N points, whose memory does not grow with K; ``tail`` keeps what PSIS needs."""
    chunks = _Chunks(*default_chunks(x.device, particle_chunk, point_chunk), max_plate_nesting,
                     (), {})
    sums = RunningWeights(x.shape[0], num_samples, tail=tail, device=x.device)
    _feed(model, guide, x, batch or {}, num_samples, chunks, sums.add)
    return sums


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


def _feed(model: Callable, guide: Callable | None, x: Tensor, batch: dict[str, Tensor],
          num_samples: int, chunks: _Chunks, sink: Callable[[Tensor, int, int], None]) -> None:
    """All K weights of points ``x`` ``[n, ...]`` (per-row extras ``batch``, sliced with x),
    a program chunk at a time, each given to ``sink(log_w [k, r], first row, first draw)``:
    a point chunk's draws in order, then the next point chunk's."""
    for lo in range(0, x.shape[0], chunks.points):
        rows = x[lo:lo + chunks.points]
        fields = slice_rows(batch, lo, lo + chunks.points)
        for k_lo in range(0, num_samples, chunks.particles):
            k = min(chunks.particles, num_samples - k_lo)
            sink(_chunk_weights(model, guide, rows, fields, k, chunks), lo, k_lo)
            if chunks.tick is not None:
                chunks.tick(k * len(rows))


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



@torch.no_grad()
def evaluate(model: Callable, guide: Callable, data: Tensor, *, num_samples: int = 5000,
             particle_chunk: int | None = None, point_chunk: int | None = None,
             hold_points: int = 256, ks: Sequence[int] | None = None,
             seed: int | None = 0, progress: bool | None = False, max_plate_nesting: int = 1,
             args: tuple = (), kwargs: dict | None = None,
             batch: dict[str, Tensor] | None = None, partial: Partial | None = None,
             memory: MemoryBudget | None = None, plan: ChunkPlan | None = None) -> Evaluation:
    """Estimate log p(x) of each row of ``data`` ``[N, ...]`` three ways, with PSIS diagnostics.

    Draws K = ``num_samples`` z per point from the guide (for the ELBO and the
    IWAE bound) and K from the prior (for naive Monte Carlo). Each program call's weights
    are reduced at once into running sums (:class:`~pyro_vae.evaluation.running.RunningWeights`),
    so no ``[K, N]`` array is ever held: working memory is one program call plus the
    running sums of ``hold_points`` points, sized to fit ``memory``
    (:func:`~pyro_vae.evaluation.chunks.plan_chunks`; the plan is in the result), whatever
    K and N are; the results add a few numbers per point.

    Args:
        model, guide: Pyro programs taking ``(x, *args, **kwargs)`` (see the module docstring).
        data: the points, on the device to compute on.
        num_samples: K, draws per point from each proposal.
        particle_chunk, point_chunk: draws × points per program call (see
            :func:`log_importance_weights`); None: the default, shrunk to fit the budget.
        hold_points: at most this many points are held at once: a chunk, seeded on its own
            from ``seed`` and its index (so the numbers depend on it, and on the program
            chunks, as they fix the order of the draws).
        ks: the K at which ``curve`` is read (default: log-spaced up to K).
        seed: seeds the draws without touching the caller's random state; ``None`` draws
            every chunk from the caller's stream (and cannot be resumed).
        progress: a tqdm bar over the images (True), none (False), or one only when stderr
            is a terminal (None).
        batch: per-row extras ``{name: [N, ...]}`` (labels ``y``), sliced with ``data``.
        partial: where finished chunks are written as they are made, and read back instead
            of drawn again (``pyro-vae evaluate`` keeps them in the run folder).
        memory: the budget (default :func:`pyro_vae.memory.memory_budget` of the device).
        plan: the chunks, planned already (:func:`evaluation_plan`); overrides the sizes above.
    """
    check_scorable(model, data, batch)
    if partial is not None and seed is None:
        raise ValueError("evaluate: partial results need a seed (with seed=None every chunk "
                         "draws from the caller's random stream, which cannot be replayed)")
    n, data_dim = data.shape[0], int(data[0].numel())
    ks = tuple(ks or k_grid(num_samples))
    plan = plan or evaluation_plan(model, guide, data, num_samples, memory, particle_chunk,
                                   point_chunk, hold_points, ks, max_plate_nesting, args, kwargs,
                                   batch)
    hold, parts = plan.hold, []
    with images_bar(n, progress, "evaluate") as bar:
        # One program call of k draws on r images is k·r / 2K of the images' work.
        chunks = _Chunks(plan.particles, plan.points, max_plate_nesting, args, kwargs or {},
                         lambda draws: bar.update(draws / (2 * num_samples)))
        for index, lo in enumerate(range(0, n, hold)):
            unit = f"chunk-{index:05d}"
            saved = partial.load(unit) if partial is not None else None
            if saved is None:
                x, fields = data[lo:lo + hold], slice_rows(batch or {}, lo, lo + hold)
                with seeded(None if seed is None else unit_seed(seed, "iwae", index), data.device):
                    saved = _chunk_estimates(model, guide, x, fields, num_samples, ks, chunks)
                saved = partial.save(unit, saved) if partial is not None else saved
            bar.update(min(n, lo + hold) - bar.n)
            parts.append(saved)
    return _evaluation(parts, ks, num_samples, n, data_dim, summed_sites(model, guide, data, batch),
                       plan)


def evaluation_plan(model: Callable, guide: Callable, data: Tensor, num_samples: int,
                    memory: MemoryBudget | None = None, particle_chunk: int | None = None,
                    point_chunk: int | None = None, hold_points: int = 256,
                    ks: Sequence[int] | None = None, max_plate_nesting: int = 1,
                    args: tuple = (), kwargs: dict | None = None,
                    batch: dict[str, Tensor] | None = None) -> ChunkPlan:
    """The chunks of :func:`evaluate` on ``data`` that fit ``memory`` (default: the device's
    :func:`~pyro_vae.memory.memory_budget`), the cost of one draw for one image measured
    on a probe call of the guide and story; BudgetError (a ValueError) when even that does
    not fit."""
    memory = memory or memory_budget(data.device)
    kwargs = kwargs or {}

    def call(k: int, r: int) -> tuple[poutine.Trace, poutine.Trace | None]:
        traces = particle_traces(model, guide, data[:r], k, max_plate_nesting, args,
                                 {**kwargs, **slice_rows(batch or {}, 0, r)},
                                 enumerate_discrete=True)
        for trace in traces:
            if trace is not None:
                trace.compute_log_prob()
        return traces

    ks = tuple(ks or k_grid(num_samples))
    held = sum(point_bytes(num_samples, len(ks), tail) for tail in (True, False))
    particles, points = default_chunks(data.device)
    return plan_chunks(probe_cell_bytes(call, points=min(2, len(data))), held, memory,
                       (particle_chunk or particles, particle_chunk is not None),
                       (point_chunk or points, point_chunk is not None), hold_points)


def _chunk_estimates(model: Callable, guide: Callable, x: Tensor, batch: dict[str, Tensor],
                     num_samples: int, ks: tuple[int, ...], chunks: _Chunks) -> Arrays:
    """One chunk of points ``x`` ``[n, ...]``: each estimate per point ``[n]`` (at K and at each
    of ``ks``: ``<name>_at_k`` ``[len(ks), n]``), the PSIS ``khat`` and ``ess`` ``[n]``, and the
    ``seconds`` it took; the weights are reduced as they are drawn."""
    start = time.perf_counter()
    guided, prior = (RunningWeights(len(x), num_samples, ks, tail, x.device) for tail in (True, False))
    _feed(model, guide, x, batch, num_samples, chunks, guided.add)
    _feed(model, None, x, batch, num_samples, chunks, prior.add)
    (iwae_at, elbo_at), (prior_at, _) = guided.curve(), prior.curve()
    khat, ess = guided.psis()
    out = {"prior_mc": prior.log_mean_exp(), "elbo": guided.mean, "iwae": guided.log_mean_exp(),
           "prior_mc_at_k": prior_at, "elbo_at_k": elbo_at, "iwae_at_k": iwae_at,
           "khat": khat, "ess": ess, "seconds": time.perf_counter() - start}
    return as_arrays(out)


def _evaluation(parts: list[Arrays], ks: tuple[int, ...], num_samples: int, n: int, data_dim: int,
                summed: tuple[str, ...], plan: ChunkPlan | None = None) -> Evaluation:
    """The :class:`Evaluation` of all chunks' arrays (see :func:`_chunk_estimates`)."""
    def joined(name: str, dim: int = 0) -> Tensor:
        return torch.cat([torch.as_tensor(p[name]) for p in parts], dim=dim)

    psis = merge_psis([PSISDiagnostics(torch.as_tensor(p["khat"]), torch.as_tensor(p["ess"]),
                                       float("nan")) for p in parts])
    at_k = {name: [torch.as_tensor(p[f"{name}_at_k"]) for p in parts] for name in ESTIMATORS}
    return Evaluation(*(Estimate.of(name, joined(name), data_dim) for name in ESTIMATORS), psis,
                      curve_of(ks, at_k), num_samples, n, data_dim,
                      float(sum(float(p["seconds"]) for p in parts)), summed,
                      None if plan is None else plan.summary())


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


def images_bar(total: int, progress: bool | None, desc: str):
    """A tqdm bar over ``total`` images, showing the images done and the time left (updated
    by fractions of an image as the work goes): shown for ``progress`` True, hidden for
    False, and for None only when stderr is a terminal (as the fit's bar), so that a log
    redirected to a file gets no bar at all."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=None if progress is None else not progress, desc=desc,
                unit="image", leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} images "
                           "[{elapsed} elapsed, {remaining} left]")
