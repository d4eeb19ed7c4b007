"""Peak resident memory of ``pyro-vae evaluate`` against K: each K in a fresh process, its
peak read from the kernel when it ends (``os.wait4``'s ru_maxrss), beside the peak of the
same command at K = 2 (imports, the run, the figures: what does not depend on K).

Trains a small digits run (64 pixels, a 16-unit network, 2 epochs) unless ``--run`` names
one, then evaluates ``--points`` test images at each K of ``--ks`` with ``--memory-budget``.
``--checkout DIR`` runs another checkout's code instead (its ``pyro_vae`` first on the path),
to compare with the code before the weights were reduced as drawn. Writes a JSON file and
prints a table.

    nice -n 19 python benchmarks/evaluate_memory.py                       # K = 1e3, 1e4, 1e5
    nice -n 19 python benchmarks/evaluate_memory.py --checkout ../main --ks 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_of(checkout: Path) -> str:
    """The checkout's own virtual environment's Python (its editable install maps
    ``pyro_vae.models`` to its own ``models/``), else this one."""
    own = checkout / ".venv" / "bin" / "python"
    return str(own) if checkout.resolve() != REPO and own.exists() else sys.executable


def peak_of(argv: list[str], checkout: Path) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit status) of ``python -m pyro_vae ARGV`` run from
    ``checkout``'s code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([python_of(checkout), "-m", "pyro_vae", *argv], env=env,
                            cwd=checkout,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", default="1000,10000,100000", help="the K, comma-separated")
    p.add_argument("--points", type=int, default=64, help="test images scored")
    p.add_argument("--memory-budget", default="200MB")
    p.add_argument("--run", type=Path, default=None, help="a run folder (default: train one)")
    p.add_argument("--checkout", type=Path, default=REPO, help="whose code runs evaluate")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "evaluate_memory.json")
    args = p.parse_args()
    run = args.run
    if run is None:
        root = Path(tempfile.mkdtemp(prefix="evaluate-memory-"))
        subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--epochs", "2", "--hidden",
                        "16", "--latent-dim", "2", "--device", "cpu", "--no-progress", "--out",
                        str(root), "--name", "tiny"], check=True, capture_output=True,
                       cwd=REPO)
        run = root / "tiny"
    new = args.checkout.resolve() == REPO
    common = ["evaluate", str(run), "--points", str(args.points), "--no-progress"]
    common += ["--memory-budget", args.memory_budget] if new else []
    base, _, _ = peak_of([*common, "--samples", "2"], args.checkout)
    rows = []
    for k in (int(t) for t in args.ks.split(",")):
        peak, seconds, _ = peak_of([*common, "--samples", str(k)], args.checkout)
        memory = json.loads((run / "evaluation.json").read_text()).get("memory", {})
        rows.append({"K": k, "peak_mb": peak, "above_k2_mb": peak - base, "seconds": seconds,
                     "working_bytes_bound": memory.get("working_bytes_bound")})
    out = {"checkout": str(args.checkout), "points": args.points, "peak_k2_mb": base,
           "memory_budget": args.memory_budget if new else None, "rows": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{args.points} images, peak RSS at K = 2: {base:.0f} MB ({args.checkout})")
    print("| K | peak RSS | above K = 2 | stated bound | seconds |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        bound = "" if r["working_bytes_bound"] is None else f"{r['working_bytes_bound'] / 1e6:.1f} MB"
        print(f"| {r['K']:,} | {r['peak_mb']:.0f} MB | {r['above_k2_mb']:+.0f} MB | {bound} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
