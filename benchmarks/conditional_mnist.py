"""log p(x | y) of the two labelled stories beside the plain VAE's log p(x), on MNIST.

Trains three models with the same networks, data split, batches and seed (default:
784-400-20, 10 epochs, batch 128, seed 0, Bernoulli likelihood, dynamic binarization):

- ``vae``: the built-in VAE, z ~ N(0, I), x ~ p(x | f(z));
- ``label-prior``: z ~ N(μ_y, diag σ_y²) learned per digit, x ~ p(x | f(z));
- ``cvae``: z ~ N(0, I), x ~ p(x | f(z, y)), guide q(z | x, y);

then scores the same ``--points`` test images (one fixed binarization) with K =
``--samples`` importance draws each and prints one row per model: the last epoch's
validation ELBO, the test ELBO and IWAE bound (log p(x) for the VAE, log p(x | y) for
the two stories that are given the label), the share of images with PSIS k̂ > 0.7,
and the seconds spent training and evaluating.

Resumable: each model lives in ``--out/<name>``; a finished fit is loaded, an interrupted
one resumed from its checkpoint, and a finished evaluation (``bench_evaluation.json``)
read back. Without MNIST under ``--data-root`` it says so and exits 0.

    OMP_NUM_THREADS=1 python benchmarks/conditional_mnist.py --out /tmp/conditional
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, StoryConfig, TrainConfig
from pyro_vae.evaluation import evaluate
from pyro_vae.runs import CHECKPOINT, METRICS, load_run, resume_run, train_run

REPO = Path(__file__).resolve().parents[1]
STORIES = {"vae": "", "label-prior": "label-prior", "cvae": "cvae"}
EVALUATION = "bench_evaluation.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "conditional",
                   help="folder of the three run folders (git-ignored by default)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, default=400, help="one hidden layer of this width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=1000, help="test images scored")
    p.add_argument("--samples", type=int, default=1000, help="K, importance draws per image")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--models", nargs="+", choices=list(STORIES), default=list(STORIES))
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, story: str) -> RunConfig:
    """The same networks, data and fit for every model; only the story differs."""
    return RunConfig(model=ModelConfig(latent_dim=args.latent_dim, hidden_sizes=(args.hidden,)),
                     data=DataConfig(name="mnist", root=str(args.data_root)),
                     train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                       seed=args.seed, device="cpu"),
                     story=StoryConfig(model=story))


def mnist_ready(args: argparse.Namespace) -> bool:
    """Whether MNIST is under ``args.data_root`` (else say so: the caller exits 0); when it is,
    set torch's threads to ``args.threads`` and make ``args.out``. Shared by the MNIST scripts."""
    if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; nothing to benchmark")
        return False
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return True


def epochs_done(path: Path) -> int:
    """Epochs recorded in the run's metrics.jsonl (0 when there is no run yet)."""
    if not (path / CHECKPOINT).exists():
        return 0
    return sum(1 for line in (path / METRICS).read_text().splitlines() if line.strip())


def trained(out: Path, name: str, config: Callable[[], RunConfig], epochs: int,
            changes: dict | None = None) -> Path:
    """``out/name`` trained to ``epochs``: trained fresh from ``config()``, resumed (with
    ``changes``, e.g. the device), or left as it is. Shared by the MNIST scripts."""
    path = out / name
    done = epochs_done(path)
    if done == 0:
        print(f"[{name}] training {epochs} epochs", file=sys.stderr)
        train_run(config(), out, name, progress=False)
    elif done < epochs or not (path / "summary.json").exists():
        print(f"[{name}] resuming at epoch {done}", file=sys.stderr)
        resume_run(path, max(epochs, done), progress=False, changes=changes)
    return path


def fitted(args: argparse.Namespace, name: str) -> Path:
    """``--out/name`` trained to ``--epochs``."""
    return trained(args.out, name, lambda: run_config(args, STORIES[name]), args.epochs)


def scored(args: argparse.Namespace, path: Path) -> dict:
    """IWAE and ELBO on the first ``--points`` test images (their labels as ``y`` for a
    story that reads them), on ``args.device`` when the script has one, cached until the fit
    or the evaluation's settings change."""
    cache, key = path / EVALUATION, {"num_points": args.points, "num_samples": args.samples,
                                     "epochs": epochs_done(path), "seed": args.seed}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if all(saved.get(k) == v for k, v in key.items()):
            return saved
    run = load_run(path, getattr(args, "device", "cpu"))
    x = run.data.eval_split("test", seed=args.seed)[:args.points]
    batch = {k: v[:args.points] for k, v in run.data.test.fields().items()}
    result = evaluate(run.model, run.guide, x, num_samples=args.samples, batch=batch,
                      seed=args.seed)
    summary = {**result.summary(), **key}
    cache.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def row(name: str, path: Path, evaluation: dict) -> dict:
    """One table row from the run folder's metrics and the evaluation."""
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    est = evaluation["estimates"]
    return {"model": name, "target": "log p(x)" if name == "vae" else "log p(x \\| y)",
            "val_elbo": records[-1]["val_elbo"], "elbo": est["elbo"]["mean"],
            "iwae": est["iwae"]["mean"], "iwae_se": est["iwae"]["stderr"],
            "khat": evaluation["psis"]["fraction_khat_above"],
            "train_s": sum(r["seconds"] for r in records), "eval_s": evaluation["seconds"]}


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nMNIST, 784-{args.hidden}-{args.latent_dim}, {args.epochs} epochs, batch "
          f"{args.batch_size}, seed {args.seed}; {args.points} test images, K = {args.samples}\n")
    print("| model | scores | val ELBO | test ELBO | test IWAE (± s.e.) | k̂ > 0.7 | train s | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['model']}` | {r['target']} | {r['val_elbo']:.2f} | {r['elbo']:.2f} | "
              f"{r['iwae']:.2f} ± {r['iwae_se']:.2f} | {100 * r['khat']:.1f}% | "
              f"{r['train_s']:.0f} | {r['eval_s']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mnist_ready(args):
        return 0
    start, rows = time.perf_counter(), []
    for name in args.models:
        path = fitted(args, name)
        rows.append(row(name, path, scored(args, path)))
        print(f"[{name}] done, {time.perf_counter() - start:.0f} s so far", file=sys.stderr)
    print_table(rows, args)
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
