"""The peer of issue 22's M2 protocol: Pyro's own ``examples/vae/ss_vae_M2.py``, run unmodified
from its public source, with the protocol's seeds, label counts and epochs.

    python benchmarks/peer_ss_vae.py --source /work/.mirror/pyro-ppl+pyro/repo --labels 100 --seeds 0 1 2 3 4
    python benchmarks/peer_ss_vae.py --table

``--source`` is a clone (or bare git directory) of https://github.com/pyro-ppl/pyro; nothing of
it is copied into this repository. Its ``examples/vae`` folder is checked out under
``--out/src`` (ignored by git), MNIST from ``--data-root`` is linked where the example looks
for it (so it downloads nothing), and the example runs with its own documented settings
(``--aux-loss -alm 46 -enum parallel -zd 50 -hl 500 -lr 0.00042 -b1 0.95 -bs 200``; batch 100
at 100 labels, which 200 does not divide), under the Pyro release the example asserts (1.9.1,
installed without dependencies under ``--out``; it also imports visdom: ``pip install visdom``),
one log per (labels, seed) in ``--out``. The table reads the logs: the test accuracy after the last
epoch (the headline, as in the protocol) and at the epoch of best validation accuracy. The
example's own split differs from ours (50,000 training images, 10,000 validation): its own
protocol, stated beside the figures. A finished log is not run again.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--aux-loss", "-alm", "46", "-enum", "parallel", "-zd", "50", "-hl", "500",
            "-lr", "0.00042", "-b1", "0.95"]
# The example asserts its own version of Pyro; it runs under that one (``--pyro``).
PYRO_VERSION = "1.9.1"


def batch_size(labels: int) -> int:
    """The example's 200, or 100 where 200 does not divide the labels (it asserts that)."""
    return 200 if labels % 200 == 0 else 100
EPOCH = re.compile(r"validation accuracy (?P<val>[0-9.]+).*test accuracy (?P<test>[0-9.]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, help="a clone or git directory of pyro-ppl/pyro")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "peer_ss_vae")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--table", action="store_true", help="read the logs, run nothing")
    return p.parse_args(argv)


def checkout(source: Path, out: Path, data_root: Path) -> Path:
    """``examples/vae`` of ``source`` at its HEAD, under ``out/src``; MNIST linked in."""
    src = out / "src"
    if not (src / "examples" / "vae" / "ss_vae_M2.py").exists():
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", str(_git_dir(source)), "archive", "HEAD",
                                  "examples/vae"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    data = src / "examples" / "vae" / "utils" / ".data"
    data.mkdir(exist_ok=True)
    # torchvision looks under the dataset class's name: the example's MNISTCached.
    link = data / "MNISTCached"
    if not link.is_symlink():
        shutil.rmtree(link, ignore_errors=True)  # a folder a failed download left behind
        link.symlink_to((data_root / "MNIST").resolve())
    return src / "examples" / "vae"


def peer_pyro(out: Path) -> Path:
    """Pyro at the example's version, installed (no dependencies) under ``out/pyro``; torch
    and the rest come from this environment. The example also imports visdom."""
    target = out / f"pyro-{PYRO_VERSION}"
    if not (target / "pyro").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), f"pyro-ppl=={PYRO_VERSION}"], check=True)
    return target


def _git_dir(source: Path) -> Path:
    return source / ".git" if (source / ".git").exists() else source


def log_path(out: Path, labels: int, seed: int) -> Path:
    return out / f"ss_vae_M2-{labels}-s{seed}.log"


def epochs_of(path: Path) -> list[tuple[float, float]]:
    """(validation, test) accuracy per epoch of a log."""
    if not path.exists():
        return []
    return [(float(m["val"]), float(m["test"])) for m in map(EPOCH.search,
                                                            path.read_text().splitlines()) if m]


def run(example: Path, pyro_dir: Path, out: Path, labels: int, seed: int, epochs: int) -> None:
    log = log_path(out, labels, seed)
    if len(epochs_of(log)) >= epochs:
        return
    log.unlink(missing_ok=True)  # the example cannot resume: a partial log starts again
    cmd = [sys.executable, "ss_vae_M2.py", "--seed", str(seed), "-n", str(epochs), "-sup",
           str(labels), *SETTINGS, "-bs", str(batch_size(labels)), "-log", str(log.resolve())]
    print(f"[peer {labels} s{seed}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(pyro_dir.resolve())}
    subprocess.run(cmd, cwd=example, check=True, env=env)
    print(f"[peer {labels} s{seed}] {time.monotonic() - start:.0f} s", file=sys.stderr)


def table(args: argparse.Namespace) -> str:
    """One row per label count; its figures are over the seeds whose run has all its epochs
    (a run still going is counted in the epochs column only)."""
    out = ["| labels | finished runs | epochs (per seed) | test, last epoch | test at best val |",
           "|---|---|---|---|---|"]
    for labels in args.labels:
        last, best, done = [], [], []
        for seed in args.seeds:
            lines = epochs_of(log_path(args.out, labels, seed))
            done.append(str(len(lines)))
            if len(lines) >= args.epochs:
                last.append(lines[-1][1])
                best.append(max(lines, key=lambda vt: vt[0])[1])
        out.append(f"| {labels} | {len(last)} | {', '.join(done)} | {_summary(last)} | "
                   f"{_summary(best)} |")
    return "\n".join(out)


def _summary(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{sd}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.table:
        if args.source is None:
            print("--source: a clone of pyro-ppl/pyro is needed to run the peer", file=sys.stderr)
            return 2
        if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            print(f"MNIST not found under {args.data_root}/MNIST/raw; nothing to run")
            return 0
        example = checkout(args.source, args.out, args.data_root)
        pyro_dir = peer_pyro(args.out)
        for seed in args.seeds:
            for labels in args.labels:
                run(example, pyro_dir, args.out, labels, seed, args.epochs)
    print(table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
