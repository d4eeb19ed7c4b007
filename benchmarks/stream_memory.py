"""Peak resident memory while streaming batches from a memory-mapped .npy file of ~2 GB.

Writes a uint8 file [N, 28, 28] of the asked size (random pixels), then reads ``--steps``
training batches of its seeded permutation through ``pyro_vae.streams.batch_loader``
(worker processes, as a fit would) and turns each into float32 [B, 784]. Prints the
resident memory of this process (VmRSS, sampled at every batch) after imports and at its
peak while reading, and that of its workers, against the file's size. The file is removed
at the end.

With ``--fit``, the built-in VAE (784-400-50, dynamic binarization, the JIT objective)
trains on the file through :func:`pyro_vae.streams.streamed_data` for ``--steps`` steps
instead, and the validation ELBO of its 10,000 resident validation images is computed at
the end.

    python benchmarks/stream_memory.py                    # 2 GB, 300 steps of 128, 2 workers
    python benchmarks/stream_memory.py --fit              # the same, training the VAE
    python benchmarks/stream_memory.py --gigabytes 0.5 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyro_vae.streams import NpyRows, StepBatches, batch_loader


def write(path: Path, rows: int) -> None:
    """A .npy file of ``rows`` random 28×28 uint8 images, written a block at a time with
    plain writes (a writable memory map would count the whole file in this process)."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 28, 28))
    offset = header.offset
    del header
    rng = np.random.default_rng(0)
    with open(path, "r+b") as f:
        f.seek(offset)
        for lo in range(0, rows, 100_000):
            f.write(rng.bytes(min(100_000, rows - lo) * 784))


def rss_mb(pid: str = "self") -> float:
    """Resident memory of a process now (VmRSS), in MB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def read_only(path: Path, args: argparse.Namespace) -> tuple[int, float, float, float, str]:
    """Read ``args.steps`` batches; images, seconds, peak RSS of this process and workers."""
    source = NpyRows(path)
    perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))
    started, seen, peak, workers = time.perf_counter(), 0, rss_mb(), 0.0
    batches = iter(batch_loader(StepBatches(source, perm, args.batch_size), workers=args.workers))
    for step, x in enumerate(batches):
        if step == args.steps:
            break
        float(x.mean())  # touch every value, as a step would
        seen += len(x)
        peak = max(peak, rss_mb())
        workers = max(workers, sum(rss_mb(str(w.pid)) for w in getattr(batches, "_workers", [])))
    return seen, time.perf_counter() - started, peak, workers, ""


def train_on(path: Path, args: argparse.Namespace) -> tuple[int, float, float, float, str]:
    """Fit the built-in VAE for ``args.steps`` steps on the streamed file, sampling RSS at
    every step; then the validation ELBO."""
    from pyro_vae.build import build_vae
    from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
    from pyro_vae.fit import fit, mean_elbo
    from pyro_vae.streams import streamed_data

    data = streamed_data(path, DataConfig(), "dynamic", workers=args.workers)
    model, guide = build_vae(ModelConfig(latent_dim=50, hidden_sizes=(400,)), data.data_dim, seed=0)
    polls, peak = [0], [rss_mb()]

    def stop() -> bool:
        polls[0] += 1
        peak[0] = max(peak[0], rss_mb())
        return polls[0] > args.steps

    started = time.perf_counter()
    result = fit(model, guide, data, TrainConfig(epochs=1, batch_size=args.batch_size, device="cpu"),
                 stop=stop, progress=False)
    seconds = time.perf_counter() - started
    val = mean_elbo(result.model, result.guide, data.eval_split("val"))
    peak[0] = max(peak[0], rss_mb())
    return (result.state.count, seconds, peak[0], float("nan"),
            f"; validation ELBO after {result.state.step} steps: {val:.2f} nats on "
            f"{len(data.val):,} resident images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fit", action="store_true", help="train the VAE on the file")
    args = p.parse_args()
    rows = int(args.gigabytes * 1e9 / 784)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "images.npy"
        started = time.perf_counter()
        write(path, rows)
        wrote = time.perf_counter() - started
        base = rss_mb()
        run = train_on if args.fit else read_only
        seen, read, peak, workers, note = run(path, args)
        size_mb = path.stat().st_size / 2 ** 20
    print(f"file {size_mb:.0f} MB ({rows:,} images 28×28 uint8), written in {wrote:.1f} s")
    print(f"{seen:,} images in {args.steps} batches of {args.batch_size} in {read:.1f} s "
          f"({seen / read:.0f} images/s) with {args.workers} workers")
    print(f"resident memory (VmRSS) of this process: {base:.0f} MB after imports, peak "
          f"{peak:.0f} MB while {'training' if args.fit else 'reading'} (+{peak - base:.0f} MB); "
          f"its {args.workers} workers together: peak {workers:.0f} MB (forked: mostly pages "
          f"shared with this process); the file is {size_mb:.0f} MB{note}")


if __name__ == "__main__":
    main()
