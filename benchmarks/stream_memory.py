"""Peak resident memory while streaming batches from a memory-mapped .npy file of ~2 GB.

Writes a uint8 file [N, 28, 28] of the asked size (random pixels), then reads ``--steps``
training batches of its seeded permutation through ``pyro_vae.data.batch_loader``
(worker processes, as a fit would) and turns each into float32 [B, 784]. Prints the
resident memory of this process (VmRSS, sampled at every batch) after imports and at its
peak while reading, and that of its workers, against the file's size. The file is removed
at the end.

With ``--fit``, the built-in VAE (784-400-50, dynamic binarization, the JIT objective)
trains on the file through :func:`pyro_vae.data.streamed_data` for ``--steps`` steps
instead, and the validation ELBO of its 10,000 held-out validation images is computed at
the end; this process's memory is printed at each phase (torch._dynamo, which torch.optim
imports when the fit builds its optimizer, is imported first and shown on its own line),
and the Pss of this process and its workers together (shared pages counted once).

    python benchmarks/stream_memory.py                    # 2 GB, 300 steps of 128, 2 workers
    python benchmarks/stream_memory.py --fit              # the same, training the VAE
    python benchmarks/stream_memory.py --fit --dir /dev/shm   # the file in memory-backed tmpfs
    python benchmarks/stream_memory.py --gigabytes 0.5 --steps 100
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data import NpyRows, StepBatches, batch_loader


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


def memory_mb(pid: str = "self") -> dict[str, float]:
    """Rss, Pss (shared pages split between the processes sharing them), and the anonymous
    part, from /proc/PID/smaps_rollup, in MB; zeros once the process is gone."""
    out = {"Rss": 0.0, "Pss": 0.0, "Anonymous": 0.0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def children() -> list[str]:
    """This process's child processes (the DataLoader workers)."""
    try:
        return Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    except OSError:
        return []


def train_on(path: Path, args: argparse.Namespace) -> tuple[int, float, float, float, str]:
    """Fit the built-in VAE for ``args.steps`` steps on the streamed file; VmRSS sampled at
    every step and at each phase (printed as it goes); then the validation ELBO."""
    importlib.import_module("torch._dynamo")  # what torch.optim imports at its first optimizer
    from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
    from pyro_vae.data import streamed_data
    from pyro_vae.infer import fit, mean_elbo
    from pyro_vae.stories import build_vae

    phase("torch._dynamo imported (torch.optim does at its first optimizer)")
    data = streamed_data(path, DataConfig(), "dynamic", workers=args.workers)
    phase("streamed_data (scan of the file, splits)")
    model, guide = build_vae(ModelConfig(latent_dim=50, hidden_sizes=(400,)), data.data_dim, seed=0)
    polls, peak, pss = [0], [rss_mb()], [0.0]

    def stop() -> bool:
        polls[0] += 1
        peak[0] = max(peak[0], rss_mb())
        if polls[0] in (1, 2, 3) or polls[0] % 50 == 0:
            phase(f"before step {polls[0]}")
            pss[0] = max(pss[0], sum(memory_mb(pid)["Pss"] for pid in ["self", *children()]))
        return polls[0] > args.steps

    started = time.perf_counter()
    result = fit(model, guide, data, TrainConfig(epochs=1, batch_size=args.batch_size, device="cpu"),
                 stop=stop, progress=False)
    seconds = time.perf_counter() - started
    phase("fit returned")
    val = mean_elbo(result.model, result.guide, data.eval_split("val"))
    peak[0] = max(peak[0], rss_mb())
    phase("validation ELBO")
    return (result.state.count, seconds, peak[0], pss[0],
            f"; validation ELBO after {result.state.step} steps: {val:.2f} nats on "
            f"{len(data.val):,} held-out images")


def phase(what: str) -> None:
    """One line: this process's memory now."""
    m = memory_mb()
    print(f"  {what:66s} VmRSS {rss_mb():6.0f} MB (anonymous {m['Anonymous']:4.0f} MB)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    p.add_argument("--dir", type=Path, default=Path("/tmp"),
                   help="where the file is written (/dev/shm when the disk is short of space)")
    p.add_argument("--fit", action="store_true", help="train the VAE on the file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = int(args.gigabytes * 1e9 / 784)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "images.npy"
        started = time.perf_counter()
        write(path, rows)
        wrote = time.perf_counter() - started
        base = rss_mb()
        phase("imports (torch, pyro, pyro-vae) and the file written")
        run = train_on if args.fit else read_only
        seen, read, peak, workers, note = run(path, args)
        size_mb = path.stat().st_size / 2 ** 20
    print(f"file {size_mb:.0f} MB in {args.dir} ({rows:,} images 28×28 uint8), written in {wrote:.1f} s")
    print(f"{seen:,} images in {args.steps} batches of {args.batch_size} in {read:.1f} s "
          f"({seen / read:.0f} images/s) with {args.workers} workers")
    together = (f"this process and its {args.workers} workers together: peak Pss {workers:.0f} MB"
                if args.fit else f"its {args.workers} workers together: peak VmRSS {workers:.0f} "
                f"MB (forked: mostly pages shared with this process)")
    print(f"resident memory (VmRSS) of this process: {base:.0f} MB after imports, peak "
          f"{peak:.0f} MB while {'training' if args.fit else 'reading'} (+{peak - base:.0f} MB); "
          f"{together}; the file is {size_mb:.0f} MB{note}")


if __name__ == "__main__":
    main()
