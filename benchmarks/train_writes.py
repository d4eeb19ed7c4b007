"""What a ``pyro-vae train`` command costs in time and in bytes written.

Runs the command once in a child process (``OMP_NUM_THREADS=1`` unless set) and reads, after
the child is reaped, what Linux accounts to it in ``/proc/self/io`` (a waited-for child's
counts are added to its parent's): ``wchar``, the bytes passed to ``write`` calls, and
``write_bytes``, the bytes sent to the block device. Also the wall time, the child's CPU
time, and the run folder's checkpoint writes (from the metrics and the checkpoint's epoch).

    python benchmarks/train_writes.py                          # the default run (1,000 epochs)
    python benchmarks/train_writes.py -- --epochs 50 --checkpoint-every 0
    python benchmarks/train_writes.py --json out.json -- --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _io() -> dict[str, int]:
    text = Path("/proc/self/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines() if line)}


def measure(train_args: list[str], out: Path) -> dict:
    """Run ``pyro-vae train --no-progress --out OUT --name run TRAIN_ARGS`` and measure it."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pyro_vae", "train", "--no-progress", "--out", str(out),
           "--name", "run", *train_args]
    before, cpu0 = _io(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after, cpu1 = _io(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    run = out / "run"
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    return {"command": " ".join(["pyro-vae", "train", *train_args]) or "pyro-vae train",
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "wchar_bytes": after["wchar"] - before["wchar"],
            "write_bytes": after["write_bytes"] - before["write_bytes"],
            "epochs": epochs,
            "checkpoint_bytes": (run / "checkpoint.safetensors").stat().st_size,
            "stderr_last": proc.stderr.strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("train_args", nargs="*", help="flags for pyro-vae train (after --)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="train-writes-") as tmp:
        figures = measure(args.train_args, Path(tmp))
    for key, value in figures.items():
        print(f"{key:>18}: {value:,}" if isinstance(value, int) else f"{key:>18}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
