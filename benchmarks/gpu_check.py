"""Assertions behind benchmarks/gpu_check.sh: on its device, pyro-vae's fit keeps everything
resident and makes no host copies per step.

    python benchmarks/gpu_check.py --device cuda --data mnist --data-root DIR   # on a GPU
    python benchmarks/gpu_check.py --device cpu --data digits --quick           # CPU rehearsal

Trains on ``--device`` (the default objective), checking after every epoch that every
parameter, optimizer state and data split lives there; profiles 20 steps of each of
``elbo`` and ``elbo-jit`` with ``torch.profiler``; runs a short NUTS chain and an
evaluation on the device. Exits non-zero on the first failed check.

What each check can show on each device:

- residency: the same on both (a tensor's ``device``);
- host-to-device and device-to-host copies (CUDA memcpy events in the profiler): none from
  the host, and at most ``READS[objective]`` reads back per step. On a CPU there is no such
  copy: the profiler runs the same way and the counts are 0 by construction;
- scalar reads (``aten::_local_scalar_dense``: what ``.item()``, ``float(t)`` and
  ``bool(t)`` run), caught by a dispatch mode with the tensor's device and the line that
  asked. On a GPU a read of a CUDA tensor is a device-to-host copy and a wait for the GPU;
  those are bounded by ``READS``. The table of reads per step by line is printed on both
  devices, so the CPU rehearsal shows the lines the GPU will see (on a CPU every tensor is
  on the device, so nothing is asserted of them there);
- NUTS: its draws are on the device of the story (Pyro's NUTS evaluates the potential
  energy and its gradient there; the tree building is Python on the host).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data import Data, Split, load_data
from pyro_vae.diagnostics import DiagnoseConfig
from pyro_vae.diagnostics.nuts import run_nuts
from pyro_vae.evaluation import evaluate
from pyro_vae.infer import fit, mean_elbo
from pyro_vae.stories import build_vae

REPO = Path(__file__).resolve().parents[1]
WARMUP, STEPS = 3, 20
# Reads of device tensors allowed per step, by objective (the lines, as the CPU rehearsal
# counts them): fit's one read of the loss (infer/loop.py); in the eager Trace_ELBO also
# Pyro's float() of each sample site's log-prob sum (the VAE's z and x in the model, z in
# the guide) and of the loss (pyro/infer/trace_elbo.py), and its NaN checks of the loss and
# of its gradient (pyro/util.py warn_if_nan). The traced loss reads only integer scalars
# that torch.jit made of shapes, which live on the host.
READS = {"elbo": 1 + 3 + 1 + 2, "elbo-jit": 1}
LIBRARIES = ("/torch/", "/gpu_check.py")
NETWORK = ModelConfig(latent_dim=50, hidden_sizes=(400,))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident(device: torch.device):
    """An epoch callback: every tensor the fit touches is on ``device``."""
    def check(session, state, record) -> None:
        assert session.device.type == device.type, f"the fit runs on {session.device}"
        for name in ("train", "val", "test"):
            split = getattr(session.data, name).x
            assert split.device.type == device.type, f"{name} split is on {split.device}"
        for p in session.modules().parameters():
            assert p.device.type == device.type, f"a parameter is on {p.device}"
        for slots in session.optimizer.state.values():
            for v in slots.values():
                if torch.is_tensor(v) and v.dim() > 0:  # Adam's step count may be a CPU scalar
                    assert v.device.type == device.type, f"optimizer state on {v.device}"
        print(f"  epoch {record.epoch}: {record.seconds:.2f} s, {record.images_per_second:.0f} img/s, "
              f"train ELBO {record.train_elbo:.2f}, val {record.val_elbo:.2f}: data, parameters "
              f"and optimizer state all on {device.type}")
    return check


def _place(frame: traceback.FrameSummary) -> str:
    """``pyro/infer/util.py:52 torch_item``: a frame, its path from the import folder."""
    roots = sorted((p for p in (*sys.path, str(REPO))
                    if p and frame.filename.startswith(p.rstrip("/") + "/")), key=len)
    path = frame.filename[len(roots[-1].rstrip("/")) + 1:] if roots else frame.filename
    return f"{path}:{frame.lineno} {frame.name}"


class ScalarReads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` calls by (device of the tensor read, asking line)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack()[:-1]
                      if not any(lib in f.filename for lib in LIBRARIES)]
            line = " <- ".join(_place(f) for f in frames[:-3:-1]) or "?"
            self.reads[(args[0].device.type, line)] += 1
        return func(*args, **(kwargs or {}))

    def on(self, device: torch.device) -> int:
        return sum(n for (d, _), n in self.reads.items() if d == device.type)


class CopyCounter:
    """``fit``'s stop hook: profiles steps WARMUP+1 .. WARMUP+STEPS (inside one epoch) and
    counts their scalar reads."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ticks = device, 0
        activities = [ProfilerActivity.CPU]
        activities += [ProfilerActivity.CUDA] if device.type == "cuda" else []
        self.prof = profile(activities=activities)
        self.reads = ScalarReads()

    def __call__(self) -> bool:
        self.ticks += 1
        if self.ticks == WARMUP + 1:
            synchronize(self.device)
            self.prof.__enter__()
            self.reads.__enter__()
        elif self.ticks == WARMUP + STEPS + 1:
            synchronize(self.device)
            self.reads.__exit__(None, None, None)
            self.prof.__exit__(None, None, None)
        return False

    def copies(self) -> tuple[int, int]:
        events = self.prof.key_averages()
        count = lambda tag: sum(e.count for e in events if tag in e.key)
        return count("HtoD"), count("DtoH")


def check_copies(data: Data, objective: str, device: torch.device) -> None:
    batch = 256 if device.type == "cuda" else 32
    sub = dataclasses.replace(data, train=Split(data.train.x[:batch * (WARMUP + STEPS + 2)], None))
    model, guide = build_vae(NETWORK, data.data_dim, seed=0)
    counter = CopyCounter(device)
    fit(model, guide, sub, TrainConfig(epochs=1, batch_size=batch, device=str(device),
                                       objective=objective), stop=counter, progress=False)
    assert counter.ticks > WARMUP + STEPS, f"{objective}: only {counter.ticks} steps were profiled"
    htod, dtoh = counter.copies()
    reads = counter.reads.on(device)
    print(f"  {objective}: {STEPS} steps of batch {batch} made {htod} host-to-device and {dtoh} "
          f"device-to-host copies, {reads} scalar reads of {device.type} tensors"
          + ("" if device.type == "cuda" else " (no copies exist on a CPU)")
          + "; scalar reads per step by line:")
    for (where, line), n in sorted(counter.reads.reads.items(), key=lambda kv: -kv[1]):
        print(f"    {n / STEPS:5.2f}  {where:4s}  {line}")
    allowed = READS[objective] * STEPS
    assert htod == 0, f"{objective}: {htod} host-to-device copies in {STEPS} steps"
    assert dtoh <= allowed, f"{objective}: {dtoh} device-to-host copies in {STEPS} steps (> {allowed})"
    if device.type == "cuda":
        assert reads <= allowed, f"{objective}: {reads} reads of CUDA tensors in {STEPS} steps (> {allowed})"


def check_nuts(model, guide, x, device: torch.device, quick: bool) -> None:
    n = 10 if quick else 50
    cfg = DiagnoseConfig(points=len(x), chains=1, warmup=n, samples=n)
    start = time.perf_counter()
    result = run_nuts(model, guide, x, cfg)
    seconds = time.perf_counter() - start
    where = {name: v.device.type for name, v in result.z.items()}
    print(f"  NUTS, {len(x)} points, {n} warm-up + {n} draws: {seconds:.1f} s; draws on {where} "
          f"(the potential and its gradient run there, the tree building is Python on the host)")
    assert all(d == device.type for d in where.values()), f"NUTS draws on {where}"


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
    data = load_data(DataConfig(name=args.data, root=str(args.data_root)))
    epochs = 1 if args.quick else 2
    model, guide = build_vae(NETWORK, data.data_dim, seed=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    print(f"training {epochs} epoch(s) of {args.data} on {name}")
    fit(model, guide, data, TrainConfig(epochs=epochs, batch_size=256, device=str(device)),
        callbacks=[resident(device)], progress=False)
    for objective in ("elbo", "elbo-jit"):
        check_copies(data.to(device), objective, device)
    x = data.eval_split("test").to(device)
    print(f"  test ELBO on {device.type}: {mean_elbo(model, guide, x):.2f} nats")
    check_nuts(model, guide, x[:2 if args.quick else 8], device, args.quick)
    points, k = (32, 50) if args.quick else (256, 500)
    ev = evaluate(model, guide, x[:points], num_samples=k)
    means = {e: round(v["mean"], 2) for e, v in ev.summary()["estimates"].items()}
    print(f"  evaluate K={k} on {points} test images on {device.type}, log p(x) (nats): {means}")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"{device.type} path: OK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--data", default="mnist", choices=("mnist", "digits"))
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder holding MNIST/raw (for --data mnist)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for the CPU rehearsal: 1 epoch, batch 32 in the copy count, "
                        "10 NUTS draws, K = 50 on 32 images")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
