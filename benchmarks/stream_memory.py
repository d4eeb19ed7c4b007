"""Peak resident memory while streaming batches from a memory-mapped .npy file of ~2 GB.

Writes a uint8 file [N, 28, 28] of the asked size (random pixels), then reads ``--steps``
training batches of its seeded permutation through ``pyro_vae.streams.batch_loader``
(worker processes, as a fit would) and turns each into float32 [B, 784]. Prints the
resident memory of this process (VmRSS, sampled at every batch) after imports and at its
peak while reading, and that of its workers, against the file's size. The file is removed
at the end.

    python benchmarks/stream_memory.py                    # 2 GB, 300 steps of 128, 2 workers
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    rows = int(args.gigabytes * 1e9 / 784)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "images.npy"
        started = time.perf_counter()
        write(path, rows)
        wrote = time.perf_counter() - started
        source = NpyRows(path)
        perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))
        base = rss_mb()
        started, seen, peak, workers = time.perf_counter(), 0, base, 0.0
        batches = iter(batch_loader(StepBatches(source, perm, args.batch_size), workers=args.workers))
        for step, x in enumerate(batches):
            if step == args.steps:
                break
            float(x.mean())  # touch every value, as a step would
            seen += len(x)
            peak = max(peak, rss_mb())
            workers = max(workers, sum(rss_mb(str(w.pid)) for w in getattr(batches, "_workers", [])))
        read = time.perf_counter() - started
        size_mb = path.stat().st_size / 2 ** 20
        del batches
    print(f"file {size_mb:.0f} MB ({rows:,} images 28×28 uint8), written in {wrote:.1f} s")
    print(f"{seen:,} images in {args.steps} batches of {args.batch_size} in {read:.1f} s "
          f"({seen / read:.0f} images/s) with {args.workers} workers")
    print(f"resident memory (VmRSS) of this process: {base:.0f} MB after imports and opening the "
          f"file, peak {peak:.0f} MB while reading (+{peak - base:.0f} MB); its {args.workers} "
          f"workers together: peak {workers:.0f} MB (forked: mostly pages shared with this "
          f"process); the file is {size_mb:.0f} MB")


if __name__ == "__main__":
    main()
