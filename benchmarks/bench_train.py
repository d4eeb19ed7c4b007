"""Training speed of pyro-vae's ``fit`` against a hand-written PyTorch VAE loop, in one run.

The floor is an eager PyTorch loop with the same encoder, decoder and
single-sample reparameterized ELBO, the same batches (a fresh permutation of
the training tensor held on the device, fresh Bernoulli draws), the same Adam
learning rate and a ``loss.item()`` per step. pyro-vae's ``fit`` trains the same
network with Pyro's ``Trace_ELBO`` (``elbo``) and its traced variant
(``elbo-jit``). Every variant is measured in every repeat, interleaved, so load
from other processes hits them alike. Prints medians over repeats, the spread
(min–max) of each per-repeat ratio, images per second, and the targets:

- steps: ``fit`` ≥ 0.85× the floor's images/s (``elbo``), ≥ 0.9× (``elbo-jit``);
- whole epoch with its validation pass: ``fit`` ≤ 1.15× the floor's time;
- peak resident memory of a 10-epoch fit and of an evaluation with K = 5000
  (each in a fresh subprocess).

Times are CPU time of this process (``time.process_time``) and wall time. On a
machine shared with other jobs, CPU time of a 1-thread run is the stable
figure: it does not count the time the process waits for a core.

    python benchmarks/bench_train.py                  # MNIST from ../shared/data
    python benchmarks/bench_train.py --quick          # fewer repeats, 2-epoch memory fit
    python benchmarks/bench_train.py --data digits    # no MNIST needed (8×8 images)
    python benchmarks/bench_train.py --profile        # + where a step's time goes
    python benchmarks/bench_train.py --conv --skip epochs memory   # + the conv VAE rows
    python benchmarks/bench_train.py --paths --skip epochs memory  # + IWAE, full-rank, IAF, Gaussian rows

The peer: when ``jax`` and ``numpyro`` are installed (``pip install -e ".[bench]"``), the
same VAE trained by NumPyro (``numpyro_peer.py``: ``SVI.update`` in one jitted
``lax.fori_loop``) is a row of the step table, timed in the same interleaved repeats by a
worker process; every row is then also given as a ratio to it. The process (and so the
worker) is pinned to ``--threads`` CPUs, so that XLA's thread pool and torch's get the
same cores (``--no-pin`` to leave the affinity alone).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyro
import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data import Data, Split, load_data
from pyro_vae.infer import AUTO_AFTER, AUTO_LEFT, PRECISIONS, fit
from pyro_vae.stories import build_vae

REPO = Path(__file__).resolve().parents[1]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
WARMUP_STEPS = 3
PEER = "numpyro"


class Clock:
    """Called before every step (``fit``'s ``stop`` hook); records wall and CPU time."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []
        self.epochs: list[tuple[float, float]] = []
        self.measured: tuple[float, float] | None = None
        """(wall, cpu) per step as measured by a runner that cannot tick (the peer)."""

    def __call__(self) -> bool:
        self.ticks.append((time.perf_counter(), time.process_time()))
        return False

    def epoch_end(self) -> None:
        """Called after each epoch's validation pass."""
        self.epochs.append((time.perf_counter(), time.process_time()))

    def per_step(self) -> tuple[float, float]:
        """(wall, cpu) seconds per step, the first ``WARMUP_STEPS`` left out."""
        if self.measured is not None:
            return self.measured
        (w0, c0), (w1, c1) = self.ticks[WARMUP_STEPS], self.ticks[-1]
        n = len(self.ticks) - 1 - WARMUP_STEPS
        return (w1 - w0) / n, (c1 - c0) / n


# ---------------------------------------------------------------- the floor


def floor_loss(guide: nn.Module, model: nn.Module, x: Tensor) -> Tensor:
    """Minus the single-sample reparameterized ELBO of ``x`` ``[B, D]``, summed, by hand."""
    h = guide.encoder(x)
    loc = guide.head.loc(h)
    scale = softplus(guide.head.raw_scale(h)) + guide.head.floor
    eps = torch.randn_like(loc)
    z = loc + scale * eps
    log_px = -binary_cross_entropy_with_logits(model.decoder(z), x, reduction="sum")
    log_pz = -0.5 * (z * z).sum() - HALF_LOG_2PI * z.numel()
    log_qz = -0.5 * (eps * eps).sum() - scale.log().sum() - HALF_LOG_2PI * z.numel()
    return -(log_px + log_pz - log_qz)


def floor_epoch(model: nn.Module, guide: nn.Module, data: Data, batch: int, seed: int,
                clock: Callable[[], bool], fused: bool = False) -> float:
    """One epoch of the hand-written loop plus its validation pass; returns the val ELBO."""
    params = list(guide.parameters()) + list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=fused or None)
    x_all, n = data.train.x, len(data.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x_all.device)
    total = 0.0
    for lo in range(0, n, batch):
        clock()
        p = x_all[perm[lo:lo + batch]]
        x = (torch.rand_like(p) < p).to(p.dtype)  # the draw pyro_vae.data uses
        loss = floor_loss(guide, model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    with torch.no_grad():
        val_x = data.eval_split("val", seed=seed)
        val = sum(floor_loss(guide, model, c).item() for c in val_x.split(2048))
    return -val / len(val_x)


# ---------------------------------------------------------------- variants


# The parts a ``fit:<objective>+<extra>`` row swaps in (the other paths of issue 15).
PATH_PARTS = {"conv": dict(encoder="conv", decoder="conv"), "full-rank": dict(guide="full-rank"),
              "iaf": dict(guide="iaf"), "gaussian": dict(likelihood="gaussian")}
# The rows of --paths: each objective, guide and likelihood path beside the default.
PATH_KINDS = ["fit:iwae", "fit:elbo-jit+full-rank", "fit:elbo-jit+iaf", "fit:elbo-jit+gaussian"]


def _network(data: Data, seed: int = 0, extra: str = "",
             activation: str = "relu") -> tuple[nn.Module, nn.Module]:
    """784-400-50 (``activation`` between the layers), with the parts ``PATH_PARTS[extra]``
    swapped in (``conv``: the conv encoder and decoder at default widths, z of 50)."""
    cfg = ModelConfig(latent_dim=50, hidden_sizes=(400,), activation=activation,
                      **PATH_PARTS.get(extra, {}))
    return build_vae(cfg, data.data_dim, seed=seed, image_shape=data.image_shape)


def _compile_networks(model: nn.Module, guide: nn.Module) -> None:
    """``torch.compile`` the encoder body and the decoder in place (Pyro's ELBO is untouched)."""
    guide.encoder.compile()
    model.decoder.compile()


def make_runner(kind: str, data: Data, batch: int, device: str, epochs: int = 1,
                activation: str = "relu") -> Callable[[Data, int, Clock], None]:
    """A function running one epoch of ``kind`` over its data with a clock.

    Kinds: ``floor``, ``floor-fused`` (the floor with fused Adam, for reference),
    ``fit:<objective>``, ``fit:<objective>+compile``, ``fit:<objective>+plain-adam``,
    ``fit:<objective>+beta`` (β = 0.5, so the engine's latent-scaling handler is at work),
    ``floor-conv``, ``fit:<objective>+conv``: the conv encoder and decoder;
    ``fit:<objective>+<part>`` for the parts of ``PATH_PARTS``; ``fit:<objective>+<precision>``
    for a ``TrainConfig.precision`` other than fp32.
    """
    extra = kind.partition("+")[2] or ("conv" if kind.endswith("conv") else "")
    model, guide = _network(data, extra=extra, activation=activation)
    if kind.startswith("floor"):
        fused = kind == "floor-fused"
        def floor(d: Data, seed: int, clock: Clock) -> None:
            for epoch in range(epochs):
                floor_epoch(model.to(device), guide.to(device), d.to(device), batch, seed + epoch,
                            clock, fused)
                clock.epoch_end()
        return floor
    objective = kind[len("fit:"):].partition("+")[0]
    if extra == "compile":
        _compile_networks(model, guide)

    def run(d: Data, seed: int, clock: Clock) -> None:
        cfg = TrainConfig(epochs=epochs, batch_size=batch, device=device, seed=seed,
                          objective=objective, beta=0.5 if extra == "beta" else 1.0,
                          particles=5 if objective.startswith("iwae") else 1,
                          precision=extra if extra in PRECISIONS else "fp32")
        with _plain_adam(extra == "plain-adam"):
            fit(model, guide, d, cfg, stop=clock, progress=False,
                callbacks=[lambda *_: clock.epoch_end()])
    return run


@contextlib.contextmanager
def _plain_adam(active: bool) -> Iterator[None]:
    """While active, ``fit`` builds the per-tensor Adam it used before issue 7 (``--before``)."""
    fit_module = importlib.import_module("pyro_vae.infer.session")
    original = fit_module.make_optimizer
    if active:
        fit_module.make_optimizer = lambda m, g, cfg, device=None: torch.optim.Adam(
            fit_module.unique_parameters(m, g), lr=cfg.lr)
    try:
        yield
    finally:
        fit_module.make_optimizer = original


def step_subset(data: Data, batch: int, steps: int) -> Data:
    """The first ``steps`` full batches of training images and one batch of validation."""
    train = Split(data.train.x[:batch * steps], None)
    return dataclasses.replace(data, train=train, val=Split(data.val.x[:batch], None))


class Peer:
    """The NumPyro worker (``numpyro_peer.py``) for one batch size, as a runner: each call
    has it take ``steps`` steps in its jitted loop and reads back the time per step."""

    def __init__(self, data: Data, batch: int, args) -> None:
        self.steps = args.steps
        self.images = Path(tempfile.mkdtemp()) / "train.npy"
        np.save(self.images, data.train.x.cpu().numpy())
        cmd = [sys.executable, str(REPO / "benchmarks" / "numpyro_peer.py"), "--serve",
               "--images", str(self.images), "--batch", str(batch), "--activation", args.activation]
        env = {**os.environ, "PEER_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.ready = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the NumPyro worker stopped (exit {self.proc.wait()})")
        return line

    def __call__(self, d: Data, seed: int, clock: Clock) -> None:
        self.proc.stdin.write(f"{self.steps} {seed}\n")
        self.proc.stdin.flush()
        r = json.loads(self._line())
        clock.measured = (r["wall"], r["cpu"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        shutil.rmtree(self.images.parent, ignore_errors=True)


def peer_available() -> bool:
    """Whether jax and numpyro can be imported (without importing them here)."""
    return all(importlib.util.find_spec(m) is not None for m in ("jax", "numpyro"))


def time_steps(kinds: list[str], data: Data, batch: int, args) -> dict[str, list[tuple[float, float]]]:
    """Per-step (wall, cpu) seconds of every kind, one entry per repeat, interleaved."""
    runners = {k: Peer(data, batch, args) if k == PEER else
               make_runner(k, data, batch, args.device, activation=args.activation) for k in kinds}
    subset = step_subset(data, batch, args.steps + WARMUP_STEPS + 1)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    try:
        for r in range(args.repeats):
            for kind, run in runners.items():
                clock = Clock()
                run(subset, r, clock)
                times[kind].append(clock.per_step())
    finally:
        for run in runners.values():
            if isinstance(run, Peer):
                run.close()
    return times


def time_epochs(kinds: list[str], data: Data, batch: int, args) -> dict[str, list[tuple[float, float]]]:
    """(wall, cpu) seconds of a whole epoch with its validation pass, per repeat, interleaved.

    Each repeat is a 2-epoch run; the figure is its second epoch (the first
    carries one-off costs, such as the JIT trace, reported on their own)."""
    runners = {k: make_runner(k, data, batch, args.device, epochs=2, activation=args.activation)
               for k in kinds}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.epoch_repeats):
        for kind, run in runners.items():
            clock = Clock()
            start = (time.perf_counter(), time.process_time())
            run(data, r, clock)
            (w0, c0), (w1, c1), (w2, c2) = start, *clock.epochs
            times[kind].append((w2 - w1, c2 - c1))
            times.setdefault(f"{kind} (1st epoch)", []).append((w1 - w0, c1 - c0))
    return times


def time_long_fits(kinds: list[str], data: Data, batch: int, args) -> dict[str, list[tuple[float, float]]]:
    """(seconds of the whole fit, median seconds per step over its last third) of an
    ``--long``-epoch fit of every kind, per repeat, interleaved: everything a user waits
    for, ``elbo-auto``'s traced steps and its compiling included."""
    runners = {k: make_runner(k, data, batch, args.device, epochs=args.long,
                              activation=args.activation) for k in kinds}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.long_repeats):
        for kind, run in runners.items():
            clock = Clock()
            start = time.perf_counter()
            run(data, r, clock)
            total = time.perf_counter() - start
            ticks = [w for w, _ in clock.ticks]
            tail = ticks[2 * len(ticks) // 3:]
            times[kind].append((total, statistics.median(b - a for a, b in zip(tail, tail[1:]))))
            print(f"  repeat {r}: {kind:16s} {total:7.1f} s", flush=True)
    return times


# ---------------------------------------------------------------- reporting


def _ratios(base: list[float], other: list[float]) -> tuple[float, float, float]:
    """Per-repeat speed ratios base_time / other_time: (median, min, max)."""
    r = [b / o for b, o in zip(base, other)]
    return statistics.median(r), min(r), max(r)


def report_steps(times: dict, batch: int) -> dict[str, float]:
    """Print the per-step table for one batch size; returns each kind's median wall-time ratio
    to its floor (the process is pinned, so wall time is what torch and XLA share)."""
    floor = times["floor"]
    print(f"\nbatch {batch}: per step, median over {len(floor)} repeats "
          f"(ratio = floor time / this time = this images/s ÷ floor images/s; "
          f"the conv rows against floor-conv)")
    peer = times.get(PEER)
    print(f"  {'loop':30s} {'cpu ms':>7s} {'wall ms':>8s} {'img/s wall':>10s} "
          f"{'ratio cpu [min-max]':>22s} {'ratio wall [min-max]':>22s}"
          + (f" {'÷ numpyro wall [min-max]':>26s}" if peer else ""))
    out = {}
    for kind, t in times.items():
        wall, cpu = [w for w, _ in t], [c for _, c in t]
        base = times["floor-conv"] if kind.endswith("conv") else floor  # each against its own network
        rc = _ratios([c for _, c in base], cpu)
        rw = _ratios([w for w, _ in base], wall)
        out[kind] = rw[0]
        vs_peer = _ratios([w for w, _ in peer], wall) if peer else None
        print(f"  {kind:30s} {1e3 * statistics.median(cpu):7.2f} {1e3 * statistics.median(wall):8.2f} "
              f"{batch / statistics.median(wall):10.0f} {rc[0]:8.3f} [{rc[1]:.3f}-{rc[2]:.3f}] "
              f"{rw[0]:8.3f} [{rw[1]:.3f}-{rw[2]:.3f}]"
              + (f" {vs_peer[0]:12.3f} [{vs_peer[1]:.3f}-{vs_peer[2]:.3f}]" if peer else ""))
    return out


def report_epochs(times: dict, batch: int) -> None:
    floor = times["floor"]
    print(f"\nbatch {batch}: whole epoch incl. validation, median over {len(floor)} repeats "
          f"(ratio = this time / floor time; target ≤ 1.15)")
    for kind, t in sorted(times.items(), key=lambda kv: "1st" in kv[0]):
        first = "1st" in kind
        base = times["floor (1st epoch)"] if first else floor
        rc = _ratios([c for _, c in t], [c for _, c in base])
        rw = _ratios([w for w, _ in t], [w for w, _ in base])
        verdict = "(one-off costs included)" if first else _verdict(rc[0] <= 1.15)
        print(f"  {kind:30s} cpu {statistics.median([c for _, c in t]):6.2f} s  "
              f"wall {statistics.median([w for w, _ in t]):6.2f} s  ratio cpu {rc[0]:.3f} "
              f"[{rc[1]:.3f}-{rc[2]:.3f}]  wall {rw[0]:.3f}  {verdict}")


def report_long(times: dict, batch: int, epochs: int, steps: int) -> None:
    floor = times["floor"]
    print(f"\nbatch {batch}: whole {epochs}-epoch fits ({steps} steps each), median over "
          f"{len(floor)} repeats (ratio = floor time / this time)")
    for kind, t in times.items():
        total = _ratios([w for w, _ in floor], [w for w, _ in t])
        step = _ratios([s for _, s in floor], [s for _, s in t])
        print(f"  {kind:16s} fit {statistics.median(w for w, _ in t):7.1f} s  ratio {total[0]:.3f} "
              f"[{total[1]:.3f}-{total[2]:.3f}]   last third {1e3 * statistics.median(s for _, s in t):6.2f} "
              f"ms/step  ratio {step[0]:.3f} [{step[1]:.3f}-{step[2]:.3f}]")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_targets(ratios: dict[int, dict[str, float]]) -> None:
    print("\ntargets (median wall-time ratios vs the floor; the process is pinned to its threads' "
          "CPUs, and XLA counts CPU time differently, so wall time is the common measure):")
    for batch, r in ratios.items():
        for kind, target in (("fit:elbo", 0.85), ("fit:elbo-jit", 0.9)):
            if kind in r:
                # fit uses fused Adam; vs the floor with fused Adam too, only Pyro's cost is left.
                print(f"  batch {batch}: {kind:14s} {r[kind]:.3f} ≥ {target}  "
                      f"{_verdict(r[kind] >= target)}   (vs floor-fused: "
                      f"{r[kind] / r['floor-fused']:.3f})")
        if "fit:elbo-jit+conv" in r:
            # within 1.2× of the hand-written conv step's time: a speed ratio ≥ 1/1.2
            print(f"  batch {batch}: fit:elbo-jit+conv {r['fit:elbo-jit+conv']:.3f} ≥ "
                  f"{1 / 1.2:.3f} (time ≤ 1.2× floor-conv)  "
                  f"{_verdict(r['fit:elbo-jit+conv'] >= 1 / 1.2)}")
        # The default, elbo-auto, takes elbo-jit's step, and elbo-compile's in a long fit
        # (--long times such fits whole, compiling included).
        for kind, when in (("fit:elbo-jit", "before it compiles"),
                           ("fit:elbo-compile", f"in a fit of >= {AUTO_AFTER + AUTO_LEFT:,} steps")):
            if kind in r:
                print(f"  batch {batch}: {kind} (fp32 default's step {when}) {r[kind]:.3f} ≥ 1.3 "
                      f"(issue 15)  {_verdict(r[kind] >= 1.3)}")
        if PEER in r:
            settings = [k for k in r if k in ("fit:elbo", "fit:elbo-jit", "fit:elbo-compile")
                        or k.partition("+")[2] in PRECISIONS]
            best = max(settings, key=r.get)
            print(f"  batch {batch}: NumPyro = {r[PEER]:.3f}× floor; fastest pyro-vae setting "
                  f"{best} = {r[best]:.3f}× floor = {r[best] / r[PEER]:.3f}× NumPyro's images/s "
                  f"(target ≥ 1.0)  {_verdict(r[best] >= r[PEER])}")


# ---------------------------------------------------------------- memory


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident set size, MB.
    Not ``ru_maxrss``: Linux carries it across exec, so a child reports its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Restart the ``VmHWM`` high-water mark (Linux ≥ 4.0), so that the data loading's
    transient copies do not hide the peak of the work measured after it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_memory(args) -> None:
    """Runs in a fresh subprocess: prints peak RSS before and after the measured work."""
    torch.set_num_threads(args.threads)
    data = load_bench_data(args)
    model, guide = _network(data)
    loading, before = rss_mb(), rss_mb("VmRSS")
    reset = reset_peak_rss()
    if args.child == "fit":
        cfg = TrainConfig(epochs=args.memory_epochs, batch_size=128, device=args.device)
        fit(model, guide, data, cfg, progress=False)
        what = f"fit, {args.memory_epochs} epochs, batch 128"
    else:
        from pyro_vae.evaluation import evaluate

        x = data.eval_split("test")[:args.eval_points].to(args.device)
        evaluate(model.to(args.device), guide.to(args.device), x, num_samples=5000)
        what = f"evaluate K=5000 on {args.eval_points} test images"
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"what": what, "loading_mb": loading, "setup_mb": before,
                      "peak_mb": rss_mb() if reset else None, "gpu_mb": gpu}))


def measure_memory(args) -> None:
    print("\nresident memory, MB (fresh subprocess each): peak while loading the data, in use "
          "after loading\n(imports, data, model), and the peak during the work itself:")
    children = ["fit"]
    if (REPO / "pyro_vae" / "evaluate.py").exists():
        children.append("evaluate")
    else:
        print("  evaluate: pyro_vae/evaluation/importance.py does not exist yet; not measured")
    for child in children:
        cmd = [sys.executable, __file__, "--child", child, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"  {child}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        gpu = f"   peak GPU {r['gpu_mb']:.0f} MiB" if r["gpu_mb"] is not None else ""
        peak = "unknown" if r["peak_mb"] is None else f"{r['peak_mb']:7.0f}"
        print(f"  {r['what']:42s} loading peak {r['loading_mb']:6.0f}   after loading "
              f"{r['setup_mb']:6.0f}   work peak {peak}{gpu}")


# ---------------------------------------------------------------- profile


CATEGORIES = (("pyro (Python)", "site-packages/pyro/"),
              ("torch (Python: nn, optim, distributions, jit)", "site-packages/torch/"),
              ("other Python in site-packages", "site-packages/"),
              ("pyro-vae and this script (Python)", "/"))


class ProfilingClock(Clock):
    """A clock that switches cProfile on after the warm-up steps (past any JIT trace)."""

    def __init__(self) -> None:
        super().__init__()
        # CPU time: wall time would count the waits for a core on a shared machine.
        self.profile = cProfile.Profile(time.process_time)

    def __call__(self) -> bool:
        if len(self.ticks) == WARMUP_STEPS:
            self.profile.enable()
        return super().__call__()


def profile_steps(kind: str, data: Data, batch: int, args) -> None:
    """cProfile of ``steps`` steps, time grouped by where it is spent, then the top functions."""
    run = make_runner(kind, data, batch, args.device)
    subset = step_subset(data, batch, args.steps + WARMUP_STEPS + 1)
    run(subset, 0, Clock())
    clock = ProfilingClock()
    run(subset, 1, clock)
    clock.profile.disable()
    stats = pstats.Stats(clock.profile)
    groups: dict[str, float] = {}
    for (path, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = next((n for n, key in CATEGORIES if key in path), None)
        name = name or ("C/ATen kernels and builtins" if path == "~" else "other Python")
        groups[name] = groups.get(name, 0.0) + tottime
    steps = len(subset.train) // batch - WARMUP_STEPS
    print(f"\nprofile of {kind}, batch {batch}: CPU ms per step by where the time is spent "
          f"(cProfile, which adds its own overhead to every Python call)")
    for name, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:42s} {1e3 * t / steps:6.2f}")
    stats.sort_stats("tottime").print_stats(12)


# ---------------------------------------------------------------- main


def pin_cpus(threads: int) -> set[int] | None:
    """Pin this process (and the workers it starts) to the first ``threads`` CPUs it may use,
    so that torch and the peer's XLA run on the same cores; None where Linux affinity is absent."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = set(sorted(os.sched_getaffinity(0))[:threads])
    os.sched_setaffinity(0, cpus)
    return cpus


def load_bench_data(args) -> Data:
    if args.data == "digits":
        return load_data(DataConfig(name="digits"))
    return load_data(DataConfig(name="mnist", root=str(args.data_root)))


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("mnist", "digits"), default="mnist")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=7, help="repeats of the step timing")
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--epoch-repeats", type=int, default=3, help="repeats of the whole-epoch timing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    p.add_argument("--conv", action="store_true",
                   help="also time the conv encoder and decoder: fit against a hand-written "
                        "step of the same network (floor-conv)")
    p.add_argument("--profile", action="store_true", help="print a per-step profile")
    p.add_argument("--before", action="store_true",
                   help="also time fit with the per-tensor Adam it used before (fit:elbo+plain-adam)")
    p.add_argument("--beta", action="store_true",
                   help="also time fit with β = 0.5 (fit:elbo+beta, fit:elbo-jit+beta): the cost "
                        "of weighting the latent sites from outside")
    p.add_argument("--paths", action="store_true",
                   help=f"also time the other paths: {', '.join(PATH_KINDS)}")
    p.add_argument("--precisions", nargs="*", default=[], choices=[p for p in PRECISIONS if p != "fp32"],
                   help="also time fit:elbo-jit with these TrainConfig.precision settings")
    p.add_argument("--activation", default="relu", choices=("relu", "softplus", "tanh"),
                   help="the networks' activation (every row, the peer's too)")
    p.add_argument("--no-numpyro", action="store_true", help="leave out the NumPyro row")
    p.add_argument("--compiled", action="store_true",
                   help="also time fit:elbo-compile (the whole step compiled by torch.compile; "
                        "with --paths also fit:iwae-compile; its "
                        "compilation falls in the untimed warm-up steps of every repeat)")
    p.add_argument("--long", type=int, default=0, metavar="EPOCHS",
                   help="also time whole fits of EPOCHS epochs (floor, fit:elbo-jit, fit:elbo-auto, "
                        f"the default, which compiles in fits of >= {AUTO_AFTER + AUTO_LEFT:,} steps)")
    p.add_argument("--long-repeats", type=int, default=2)
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the process to --threads CPUs")
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 epoch repeat, 2-epoch memory fit")
    p.add_argument("--skip", nargs="*", default=[], choices=("steps", "epochs", "memory"))
    p.add_argument("--memory-epochs", type=int, default=10)
    p.add_argument("--eval-points", type=int, default=128)
    p.add_argument("--child", choices=("fit", "evaluate"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.epoch_repeats, args.memory_epochs = 3, 1, 2
        args.steps, args.eval_points = 20, 32
    return args


def main(args) -> None:
    if args.data == "mnist" and not (args.data_root / "MNIST" / "raw").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; skipping (use --data digits).")
        return
    if args.child:
        return child_memory(args)
    torch.set_num_threads(args.threads)
    pinned = pin_cpus(args.threads) if not args.no_pin else None
    data = load_bench_data(args).to(args.device)
    print(f"{args.data}: {len(data.train)} training images, D = {data.data_dim}; network "
          f"{data.data_dim}-400-50 ({args.activation}); device {args.device}; torch "
          f"{torch.__version__}, pyro {pyro.__version__}; {args.threads} thread(s)"
          + (f", pinned to CPUs {sorted(pinned)}" if pinned else ""))
    kinds = ["floor", "floor-fused", "fit:elbo", "fit:elbo-jit"]
    kinds += ["fit:elbo-compile"] if args.compiled else []
    kinds += [f"fit:elbo-jit+{p}" for p in args.precisions]
    kinds += PATH_KINDS if args.paths else []
    kinds += ["fit:iwae-compile"] if args.paths and args.compiled else []
    if not args.no_numpyro and args.device == "cpu":
        if peer_available():
            kinds.append(PEER)
        else:
            print("numpyro/jax not installed: no NumPyro row (pip install -e '.[bench]')")
    kinds += ["fit:elbo+compile"] if args.compile else []
    kinds += ["fit:elbo+plain-adam"] if args.before else []
    kinds += ["fit:elbo+beta", "fit:elbo-jit+beta"] if args.beta else []
    kinds += ["floor-conv", "fit:elbo+conv", "fit:elbo-jit+conv"] if args.conv else []
    ratios = {}
    for batch in args.batch_sizes:
        if "steps" not in args.skip:
            ratios[batch] = report_steps(time_steps(kinds, data, batch, args), batch)
        if "epochs" not in args.skip:
            report_epochs(time_epochs(["floor", "fit:elbo", "fit:elbo-jit"], data, batch, args), batch)
        if args.long:
            long = ["floor", "fit:elbo-jit", "fit:elbo-auto"]
            steps = args.long * math.ceil(len(data.train) / batch)
            report_long(time_long_fits(long, data, batch, args), batch, args.long, steps)
    if ratios:
        report_targets(ratios)
    if args.profile:
        for kind in ("floor", "fit:elbo", "fit:elbo-jit"):
            profile_steps(kind, data, max(args.batch_sizes), args)
    if "memory" not in args.skip:
        measure_memory(args)


if __name__ == "__main__":
    main(parse_args())
