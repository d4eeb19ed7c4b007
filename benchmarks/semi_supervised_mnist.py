"""M2 on MNIST with a few labels: test accuracy of q(y | x) against Pyro's and Kingma's.

For each label count N (``--labels``, default 100 600 1000 3000) and seed (``--seeds``),
trains ``pyro-vae train --model m2 --labels N --seed S`` with Pyro's ss-VAE recipe where
pyro-vae has the knob: 784-500-50 softplus MLPs, batch 200, Adam lr 4.2e-4, α = 46,
Bernoulli likelihood (here on dynamically binarized pixels), y summed by ``TraceEnum_ELBO``.
Prints one row per label count: test accuracy (last epoch; mean ± SD over the seeds run),
the best test accuracy seen, epochs, seconds per epoch, and the anchors.

Resumable: each run lives in ``--out/m2-N-sS``; ``--epochs E`` trains fresh runs to E and
resumes shorter ones to E, so a later call with a larger E continues where this one stopped.
Without MNIST under ``--data-root`` it says so and exits 0.

    OMP_NUM_THREADS=1 python benchmarks/semi_supervised_mnist.py --epochs 10 --labels 100 3000
    python benchmarks/semi_supervised_mnist.py --epochs 50 --device cuda      # a GPU run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional_mnist import mnist_ready, trained  # noqa: E402  (a sibling benchmark's helpers)

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, StoryConfig, TrainConfig  # noqa: E402
from pyro_vae.runs import METRICS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Test accuracy: Pyro's ss-VAE tutorial (enumeration + auxiliary loss); Kingma et al. 2014
# report M2's test error (11.97 %, 4.94 %, 3.60 %, 3.92 %), here as accuracy.
ANCHORS = {100: (0.9319, 0.8803), 600: (0.9437, 0.9506), 1000: (0.9487, 0.9640),
           3000: (0.9582, 0.9608)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "m2")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, labels: int, seed: int) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=50, hidden_sizes=(500,), activation="softplus"),
                     data=DataConfig(name="mnist", root=str(args.data_root), labels=labels),
                     train=TrainConfig(epochs=args.epochs, batch_size=200, lr=4.2e-4, seed=seed,
                                       device=args.device, objective="enum"),
                     story=StoryConfig(model="m2", guide="story", args={"alpha": 46.0}))


def fitted(args: argparse.Namespace, labels: int, seed: int) -> Path:
    return trained(args.out, f"m2-{labels}-s{seed}", lambda: run_config(args, labels, seed),
                   args.epochs, changes={"device": args.device})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]


def print_table(args: argparse.Namespace, done: dict[int, list[list[dict]]]) -> None:
    print(f"\nM2 on MNIST, 784-500-50, batch 200, α = 46; seeds {args.seeds}\n")
    print("| labels | test accuracy (last epoch, mean ± SD) | best epoch's | epochs | s/epoch "
          "| Pyro | Kingma et al. |")
    print("|---|---|---|---|---|---|---|")
    for labels, runs in done.items():
        last = [r[-1]["test_accuracy"] for r in runs]
        # Lines written by a resume before the fix that kept them whole lack the accuracy.
        best = [max(e.get("test_accuracy", 0.0) for e in r) for r in runs]
        sd = statistics.stdev(last) if len(last) > 1 else float("nan")
        seconds = statistics.mean(e["seconds"] for r in runs for e in r)
        pyro_acc, kingma = ANCHORS.get(labels, (float("nan"), float("nan")))
        print(f"| {labels} | {statistics.mean(last):.4f} ± {sd:.4f} ({len(runs)} seeds) | "
              f"{statistics.mean(best):.4f} | {len(runs[0])} | {seconds:.0f} | {pyro_acc:.4f} | "
              f"{kingma:.4f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mnist_ready(args):
        return 0
    start, done = time.perf_counter(), {}
    for seed in args.seeds:
        for labels in args.labels:
            path = fitted(args, labels, seed)
            done.setdefault(labels, []).append(records(path))
            print(f"[m2-{labels}-s{seed}] test accuracy {done[labels][-1][-1]['test_accuracy']:.4f}, "
                  f"{time.perf_counter() - start:.0f} s so far", file=sys.stderr)
    print_table(args, done)
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
