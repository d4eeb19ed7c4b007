"""A digit classifier from a handful of labels: M2, the semi-supervised story.

In M2 the digit is part of the generative story, y ~ Cat, z ~ N(0, I), x ~ p(x | f(z, y)),
observed through its label on a few images and summed out exactly on all the others. Its
guide's q(y | x) is then a classifier that learned from every image, labelled or not.

This script fits M2 on the bundled 8×8 digits with each of ``--labels`` label counts (the
same seed, networks and epochs), and beside each a classifier network of the same shape
trained on the labelled images alone (cross-entropy, the same epochs of the labelled rows),
then

1. writes ``accuracy_against_labels.png``: test accuracy of M2's q(y | x) and of the
   labelled-only classifier against the number of labels kept;
2. prints the table, and each M2 run's folder (confusion and reliability figures inside).

``--story adgm`` fits the auxiliary deep generative model instead: M2 whose guide draws an
auxiliary latent a first and classifies by q(y | a, x).

Run: ``python examples/semi_supervised.py [--labels 20 50 100 300] [--epochs 60] [--out m2]
[--story adgm]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from pyro_vae import (
    DataConfig,
    LoadedRun,
    ModelConfig,
    RunConfig,
    StoryConfig,
    TrainConfig,
    accuracy,
    build_part,
    load_or_train,
    save_figure,
    scored_splits,
)
from pyro_vae.guides import Classifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 300],
                   help="label counts to keep (balanced across the 10 digits)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128], help="hidden widths")
    p.add_argument("--out", type=Path, default=Path("m2"), help="folder for runs and the PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--story", default="m2", choices=("m2", "adgm"),
                   help="the semi-supervised story: M2, or the auxiliary deep generative model")
    return p.parse_args(argv)


def m2_run(args: argparse.Namespace, labels: int) -> LoadedRun:
    """The story with ``labels`` kept, fitted in ``out/<story>-<labels>`` (or loaded from
    there)."""
    cfg = RunConfig(model=ModelConfig(latent_dim=args.latent_dim, hidden_sizes=tuple(args.hidden)),
                    data=DataConfig(name="digits", labels=labels),
                    train=TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu",
                                      objective="enum"),
                    story=StoryConfig(model=args.story, guide="story"))
    return load_or_train(None, cfg, args.out, f"{args.story}-{labels}")


def labelled_only(run: LoadedRun, epochs: int, seed: int) -> float:
    """Test accuracy of M2's classifier network, fresh, trained by cross-entropy on the
    run's labelled training rows alone (Adam, the run's rate, batches of up to 128)."""
    torch.manual_seed(seed)
    net = Classifier(build_part(run.config.model, "encoder", run.data.data_dim), 10)
    known = run.data.train.known
    x, y = run.data.eval_split("train", seed=seed)[known], run.data.train.labels[known]
    opt = torch.optim.Adam(net.parameters(), lr=run.config.train.lr)
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
    with torch.no_grad():
        logits = net(run.data.eval_split("test", seed=seed))
    return accuracy(logits.softmax(-1), run.data.test.labels)


def draw(rows: list[tuple[int, float, float]], path: Path, story: str) -> Path:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    counts = [r[0] for r in rows]
    ax.plot(counts, [r[1] for r in rows], "o-", label=f"{story}: q(y | x), all images used")
    ax.plot(counts, [r[2] for r in rows], "s--", label="the same network, labelled images only")
    ax.set(xscale="log", xlabel="labels kept (balanced across digits)", ylabel="test accuracy",
           ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("8×8 digits: what the unlabelled images add", fontsize=9)
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for labels in args.labels:
        run = m2_run(args, labels)
        probs, truth = scored_splits(run.model, run.guide, run.data, args.seed, ("test",))["test"]
        rows.append((labels, accuracy(probs, truth), labelled_only(run, args.epochs, args.seed)))
        print(f"{labels:5d} labels: {args.story} {rows[-1][1]:.4f}, labelled only {rows[-1][2]:.4f}  "
              f"({run.path})")
    print(draw(rows, args.out / "accuracy_against_labels.png", args.story))


if __name__ == "__main__":
    main()
