"""Digit completion on MNIST: the quadrants story against a deterministic network.

For each number of observed quadrants (``--observed``, default 1 2 3) trains the story
``examples/stories/quadrants.py:Quadrants`` (z ~ p(z | o), h ~ Bernoulli(f(z, o)); guide
q(z | x) built automatically) and, on the same split and binarization, a deterministic
network o → h with the story's decoder widths, trained by binary cross-entropy on the hidden
pixels for the same epochs. Prints the test negative log-likelihood of the hidden quadrants,
−log p(h | o), in nats per image: the story's by its IWAE bound with K = ``--samples``
(an upper bound on its NLL), the network's exactly (its Bernoulli is the whole model).

Resumable: each story run lives in ``--out/quadrants-<k>`` (trained, resumed or loaded);
the baseline is retrained each call (seconds). Without MNIST it says so and exits 0.

    OMP_NUM_THREADS=1 python benchmarks/quadrants_mnist.py --epochs 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional_mnist import epochs_done, mnist_ready  # noqa: E402  (a sibling benchmark's helper)

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, StoryConfig, TrainConfig  # noqa: E402
from pyro_vae.evaluation import evaluate  # noqa: E402
from pyro_vae.runs import LoadedRun, load_run, resume_run, train_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORY = REPO / "examples" / "stories" / "quadrants.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "quadrants")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--observed", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--points", type=int, default=1000, help="test images scored")
    p.add_argument("--samples", type=int, default=100, help="K of the story's IWAE bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def story_run(args: argparse.Namespace, observed: int) -> LoadedRun:
    name = f"quadrants-{observed}"
    story = StoryConfig(model=f"{STORY}:Quadrants", args={
        "observed": observed, "latent_dim": args.latent_dim, "hidden": args.hidden})
    cfg = RunConfig(model=ModelConfig(hidden_sizes=(args.hidden,)),
                    data=DataConfig(name="mnist", root=str(args.data_root)),
                    train=TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu"), story=story)
    done = epochs_done(args.out / name)
    if done == 0:
        train_run(cfg, args.out, name, progress=False)
    elif done < args.epochs:
        resume_run(args.out / name, args.epochs, progress=False)
    return load_run(args.out / name)


def baseline_nll(run: LoadedRun, args: argparse.Namespace) -> float:
    """−log p(h | o) per test image of a network o → Bernoulli(h), trained by BCE."""
    torch.manual_seed(args.seed)
    hidden, d = run.model.hidden, run.data.data_dim
    net = nn.Sequential(nn.Linear(d, args.hidden), nn.Softplus(), nn.Linear(args.hidden, d))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    for epoch in range(args.epochs):
        x = run.data.eval_split("train", seed=args.seed + 1 + epoch)  # a fresh binarization
        for rows in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            batch = x[rows]
            loss = (bce(net(batch.masked_fill(hidden, 0.0)), batch) * hidden).sum(-1).mean()
            loss.backward()
            opt.step()
    x = run.data.eval_split("test", seed=args.seed)[:args.points]
    with torch.no_grad():
        return float((bce(net(x.masked_fill(hidden, 0.0)), x) * hidden).sum(-1).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mnist_ready(args):
        return 0
    start, rows = time.perf_counter(), []
    for observed in args.observed:
        run = story_run(args, observed)
        x = run.data.eval_split("test", seed=args.seed)[:args.points]
        result = evaluate(run.model, run.guide, x, num_samples=args.samples, seed=args.seed)
        iwae = result.summary()["estimates"]["iwae"]
        rows.append((observed, baseline_nll(run, args), -iwae["mean"], iwae["stderr"]))
        print(f"[{observed} observed] {time.perf_counter() - start:.0f} s so far", file=sys.stderr)
    print(f"\nMNIST completion, {args.epochs} epochs, 784-{args.hidden}-{args.latent_dim}; "
          f"{args.points} test images; NLL of the hidden quadrants, nats per image\n")
    print("| quadrants observed | network o → h | quadrants story (IWAE, K = "
          f"{args.samples}) |\n|---|---|---|")
    for observed, nn_nll, nll, se in rows:
        print(f"| {observed} | {nn_nll:.2f} | {nll:.2f} ± {se:.2f} |")
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
