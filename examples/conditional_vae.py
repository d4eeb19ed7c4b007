"""What z encodes once the digit is given: the conditional VAE's style transfer.

The conditional VAE draws z ~ N(0, I) and then x ~ p(x | f(z, y)): the label says which
digit, so z is left to hold the rest (slant, width, stroke). This script fits (or loads,
``--run``) a cvae run on the bundled 8×8 digits and a plain VAE with the same settings,
then

1. writes ``style_transfer.png``: each row takes one test image, encodes it to
   z = E_q[z | x, y], and draws the image mean of p(x | z, y) for y = 0..9 (first
   column: the test image itself), so one row is one handwriting across all digits;
2. writes ``label_<k>_draws.png`` for each ``--label k``: 32 image means with z ~ N(0, I)
   and the label held at k, a chosen digit in many styles;
3. prints, on the same test images, the cvae's log p(x | y) beside the plain VAE's
   log p(x) (IWAE bounds, nats per image), and log p(x | y) − log K, a lower bound on the
   story's own log p(x) with p(y) = 1/K: the number comparable with the VAE's.

Run: ``python examples/conditional_vae.py [--run RUN] [--epochs 100] [--label 3 8] [--out cvae]``
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

# The same comparison table as the label-prior example (the script's folder is on sys.path).
from label_prior import report  # noqa: E402

from pyro_vae import (
    DataConfig,
    LoadedRun,
    ModelConfig,
    RunConfig,
    StoryConfig,
    TrainConfig,
    evaluate,
    figures,
    load_or_train,
    prior_predictive,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a fitted cvae run folder")
    p.add_argument("--epochs", type=int, default=100, help="epochs when fitting new models")
    p.add_argument("--latent-dim", type=int, default=2, help="dimension of z of new models")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="hidden widths")
    p.add_argument("--label", type=int, nargs="*", default=[3], help="digits to draw, 32 each")
    p.add_argument("--samples", type=int, default=1000, help="K, importance draws per test image")
    p.add_argument("--points", type=int, default=None, help="test images scored (default: all)")
    p.add_argument("--out", type=Path, default=Path("cvae"), help="folder for runs and PNGs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fitted_runs(args: argparse.Namespace) -> tuple[LoadedRun, LoadedRun]:
    """The cvae run (``--run``, or fitted in ``out/cvae``) and a plain VAE fitted with the
    same model, data and training settings in ``out/vae``."""
    cfg = RunConfig(model=ModelConfig(latent_dim=args.latent_dim, hidden_sizes=tuple(args.hidden)),
                    data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu"),
                    story=StoryConfig(model="cvae"))
    story = load_or_train(args.run, cfg, args.out, "cvae")
    if story.config.story.model != "cvae":
        raise SystemExit(f"{story.path} is not a cvae run (--model cvae)")
    for label in args.label:  # before the plain VAE is fitted
        if not 0 <= label < story.model.classes:
            raise SystemExit(f"--label {label}: the story has {story.model.classes} classes, "
                             f"0..{story.model.classes - 1}")
    plain = dataclasses.replace(story.config, story=StoryConfig(), image_shape=())
    return story, load_or_train(None, plain, args.out, "vae")


@torch.no_grad()
def label_draws(run: LoadedRun, label: int, path: Path, n: int = 32) -> Path:
    """Image means ``[n, D]`` of ``n`` draws z ~ N(0, I) with y held at ``label``, run
    through the story (its sites, not its methods), saved as one grid."""
    template = run.data.eval_split("test")[:1].expand(n, -1)
    mean, _ = prior_predictive(run.model, template, {"y": torch.full((n,), label, dtype=torch.long)})
    return figures.save_grid(mean, run.data.image_shape, path, ncol=8,
                             title=f"{n} image means, z ~ N(0, I), y = {label}")


def main(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    story, vae = fitted_runs(args)
    x = story.data.eval_split("test", seed=args.seed)[:args.points]
    y = story.data.test.labels[:args.points]
    [path] = story.model.figures(story.guide, x, {"y": y}, story.data.image_shape, args.out)
    print(f"{path}: each row one test image's z = E_q[z | x, y] decoded as every digit: "
          f"the style stays, the digit changes")
    for label in args.label:
        drawn = label_draws(story, label, args.out / f"label_{label}_draws.png")
        print(f"{drawn}: 32 digits {label}, z ~ N(0, I): one label, many styles")
    conditional = evaluate(story.model, story.guide, x, num_samples=args.samples, batch={"y": y},
                           seed=args.seed)
    plain = evaluate(vae.model, vae.guide, x, num_samples=args.samples, seed=args.seed)
    report(conditional, plain, story.model.classes, "cvae")


if __name__ == "__main__":
    main(parse_args())
