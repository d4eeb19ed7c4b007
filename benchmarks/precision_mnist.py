"""Does a reduced-precision setting fit as well as fp32? Three seeds of each, on MNIST.

For every ``--precisions`` setting and every seed, the 784-400-50 MLP VAE (softplus,
Bernoulli, dynamic binarization, batch 256, ``elbo-jit``) trains ``--epochs`` epochs
with ``TrainConfig.precision`` set, in its own run folder under ``--out``; then the
test IWAE bound (K = ``--samples``) is computed in float32 on the first ``--points``
test images (one fixed binarization, the same images for every run). The table gives
each run's final validation ELBO, test IWAE and seconds per epoch, then per setting the
mean over seeds and its difference from fp32's mean beside fp32's seed-to-seed spread.
A setting is "within the spread" when both differences are smaller than fp32's range
over its seeds. Resumable: finished runs and evaluations are kept.

    nice -n 5 python benchmarks/precision_mnist.py          # fp32, fp32-medium, bf16 × seeds 0 1 2
    python benchmarks/precision_mnist.py --epochs 1 --seeds 0 --points 100 --samples 100  # a try
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.infer import PRECISIONS
from pyro_vae.runs import METRICS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional_mnist import mnist_ready, scored, trained  # noqa: E402  (the same resumable runs)

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "precision")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--points", type=int, default=2000, help="test images scored")
    p.add_argument("--samples", type=int, default=1000, help="K of the test IWAE bound")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    args.seed = 0  # the evaluation's draws and the test binarization: the same for every run
    return args


def run_config(args: argparse.Namespace, precision: str, seed: int) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=50, hidden_sizes=(400,), activation="softplus"),
                     data=DataConfig(name="mnist", root=str(args.data_root)),
                     train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                                       device="cpu", precision=precision))


def fitted(args: argparse.Namespace, precision: str, seed: int) -> Path:
    """The run folder of (precision, seed), trained to ``--epochs``."""
    return trained(args.out, f"{precision}-seed{seed}", lambda: run_config(args, precision, seed),
                   args.epochs)


def row(precision: str, seed: int, path: Path, evaluation: dict) -> dict:
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    return {"precision": precision, "seed": seed, "val_elbo": records[-1]["val_elbo"],
            "iwae": evaluation["estimates"]["iwae"]["mean"],
            "iwae_se": evaluation["estimates"]["iwae"]["stderr"],
            "s_per_epoch": statistics.mean(r["seconds"] for r in records)}


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nMNIST 784-400-50, {args.epochs} epochs, batch {args.batch_size}; test IWAE K = "
          f"{args.samples} on the first {args.points} test images (float32 evaluation)\n")
    print("| precision | seed | val ELBO | test IWAE (± s.e.) | s / epoch |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['seed']} | {r['val_elbo']:.2f} | {r['iwae']:.2f} ± "
              f"{r['iwae_se']:.2f} | {r['s_per_epoch']:.1f} |")
    by = {p: [r for r in rows if r["precision"] == p] for p in args.precisions}
    base = by.get("fp32", [])
    spread = {k: max(r[k] for r in base) - min(r[k] for r in base) for k in ("val_elbo", "iwae")} if base else {}
    print("\n| precision | mean val ELBO | Δ vs fp32 | mean test IWAE | Δ vs fp32 | within fp32's "
          "seed range? |\n|---|---|---|---|---|---|")
    for p, rs in by.items():
        if not rs:
            continue
        mean = {k: statistics.mean(r[k] for r in rs) for k in ("val_elbo", "iwae")}
        delta = {k: mean[k] - statistics.mean(r[k] for r in base) for k in mean} if base else {}
        ok = all(abs(delta[k]) < spread[k] for k in delta) if base else None
        print(f"| {p} | {mean['val_elbo']:.2f} | {delta.get('val_elbo', float('nan')):+.2f} | "
              f"{mean['iwae']:.2f} | {delta.get('iwae', float('nan')):+.2f} | "
              f"{'yes' if ok else 'no' if ok is not None else '-'} |")
    if spread:
        print(f"\nfp32's seed range: val ELBO {spread['val_elbo']:.2f}, test IWAE {spread['iwae']:.2f} nats")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mnist_ready(args):
        return 0
    start, rows = time.perf_counter(), []
    for precision in args.precisions:
        for seed in args.seeds:
            path = fitted(args, precision, seed)
            rows.append(row(precision, seed, path, scored(args, path)))
            print(f"[{precision}-seed{seed}] done, {time.perf_counter() - start:.0f} s so far",
                  file=sys.stderr)
    print_table(rows, args)
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
