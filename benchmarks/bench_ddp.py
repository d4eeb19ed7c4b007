"""Data-parallel throughput: images/s of ``pyro-vae train`` with 1 and 2 processes.

Each configuration is the real command, ``torchrun --nproc-per-node N -m pyro_vae train``,
with one intra-op thread per process (``OMP_NUM_THREADS=1``), on CPU (gloo) unless
``--device cuda``. The figure is the training images per second of each epoch (the
global batch over all ranks, as metrics.jsonl records it), median over the epochs after
the first (which holds the JIT trace) and over repeats. Configurations alternate within
each repeat, so load from other processes hits them alike. Printed:

- images/s with 1 process (torchrun, one rank: the plain single-process fit) and with 2;
- the scaling efficiency, images/s(2) / (2 × images/s(1)), whose ideal is 1;
- for reference, one process with 2 threads: the same 2 cores used by one process.

    python benchmarks/bench_ddp.py                 # MNIST from ../shared/data, else digits
    python benchmarks/bench_ddp.py --data digits --epochs 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(processes: int, threads: int, args: argparse.Namespace, out: Path) -> list[float]:
    """One fit by ``processes`` ranks of ``threads`` threads; images/s of each epoch."""
    name = f"p{processes}t{threads}-{time.monotonic_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "pyro_vae",
           "train", "--data", args.data, "--data-root", str(MNIST), "--device", args.device,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--hidden", args.hidden, "--latent-dim", str(args.latent_dim), "--no-progress",
           "--out", str(out), "--name", name]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_second"] for r in rows[1:]]  # the first epoch holds the JIT trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    have_mnist = (MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    p.add_argument("--data", default="mnist" if have_mnist else "digits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256, help="the global batch")
    p.add_argument("--hidden", default="400")
    p.add_argument("--latent-dim", type=int, default=50)
    args = p.parse_args()
    configs = {"1 process, 1 thread": (1, 1), "2 processes, 1 thread each": (2, 1),
               "1 process, 2 threads": (1, 2)}
    speeds: dict[str, list[float]] = {k: [] for k in configs}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for label, (procs, threads) in configs.items():
                speeds[label] += train(procs, threads, args, Path(tmp))
    print(f"{args.data}, hidden {args.hidden}, z {args.latent_dim}, global batch {args.batch_size}, "
          f"{args.device}; {os.cpu_count()} cores; medians over {args.repeats} repeats × "
          f"{args.epochs - 1} epochs; {time.perf_counter() - started:.0f} s")
    med = {k: statistics.median(v) for k, v in speeds.items()}
    for label, value in med.items():
        print(f"  {label:28s} {value:9.0f} images/s  (min {min(speeds[label]):.0f}, "
              f"max {max(speeds[label]):.0f})")
    one, two = med["1 process, 1 thread"], med["2 processes, 1 thread each"]
    print(f"  scaling efficiency, 2 processes vs 1: {two / (2 * one):.2f} "
          f"(speed-up {two / one:.2f}×; ideal 2×)")
    print(f"  2 processes vs 1 process with 2 threads: {two / med['1 process, 2 threads']:.2f}×")


if __name__ == "__main__":
    main()
