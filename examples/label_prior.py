"""One distribution per digit: the label-prior story beside the plain VAE.

The plain VAE explains every digit with one z ~ N(0, I); the label-prior story gives
each digit k its own learned region, z ~ N(μ_k, diag σ_k²), and shares the decoder.
This script fits (or loads, ``--run``) a label-prior run on the bundled 8×8 digits and a
plain VAE with the same settings, then

1. writes ``regions_beside_vae.png``: left, the plain VAE's test images encoded to
   E_q[z | x], coloured by digit, under its one prior N(0, I) (1σ and 2σ circles);
   right, the same images under the label-prior story, with each digit's learned
   prior drawn as its 1σ and 2σ ellipses and the digit at its mean (above 2-D, both
   panels show the first two principal components of the encoded points);
2. prints, on the same test images, the label-prior's log p(x | y) beside the plain
   VAE's log p(x) (IWAE bounds, nats per image), and log p(x | y) − log K, a lower bound
   on the story's own log p(x) with p(y) = 1/K: the number comparable with the VAE's.

Run: ``python examples/label_prior.py [--run RUN] [--epochs 100] [--out label-prior]``
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import (
    DataConfig,
    Evaluation,
    LoadedRun,
    ModelConfig,
    RunConfig,
    StoryConfig,
    TrainConfig,
    evaluate,
    load_or_train,
    mean_latents,
    save_figure,
)
from pyro_vae.models import draw_regions, project_regions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a fitted label-prior run folder")
    p.add_argument("--epochs", type=int, default=100, help="epochs when fitting new models")
    p.add_argument("--latent-dim", type=int, default=2, help="dimension of z of new models")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="hidden widths")
    p.add_argument("--samples", type=int, default=1000, help="K, importance draws per test image")
    p.add_argument("--points", type=int, default=None, help="test images scored (default: all)")
    p.add_argument("--out", type=Path, default=Path("label-prior"), help="folder for runs and PNGs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fitted_runs(args: argparse.Namespace) -> tuple[LoadedRun, LoadedRun]:
    """The label-prior run (``--run``, or fitted in ``out/label-prior``) and a plain VAE
    fitted with the same model, data and training settings in ``out/vae``."""
    cfg = RunConfig(model=ModelConfig(latent_dim=args.latent_dim, hidden_sizes=tuple(args.hidden)),
                    data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu"),
                    story=StoryConfig(model="label-prior"))
    story = load_or_train(args.run, cfg, args.out, "label-prior")
    if story.config.story.model != "label-prior":
        raise SystemExit(f"{story.path} is not a label-prior run (--model label-prior)")
    plain = dataclasses.replace(story.config, story=StoryConfig(), image_shape=())
    return story, load_or_train(None, plain, args.out, "vae")


def test_images(run: LoadedRun, points: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``points`` test images ``[N, D]`` (one seeded binarization) and labels ``[N]``."""
    x, y = run.data.eval_split("test", seed=seed), run.data.test.labels
    return x[:points], y[:points]


def draw(story: LoadedRun, vae: LoadedRun, x: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """The plain VAE's latent map under N(0, I) beside the label-prior's regions."""
    fig = Figure(figsize=(14, 6.5))
    left, right = fig.subplots(1, 2)
    z = mean_latents(vae.guide, x)["z"].reshape(len(x), -1)
    one = project_regions(z, y, torch.zeros(1, z.shape[1]), torch.ones(1, z.shape[1]))
    draw_regions(left, one, marks=["N(0, I)"],
                 title=f"plain VAE: one prior N(0, I) for every digit (1σ, 2σ), d = {one.dim}")
    draw_regions(right, story.model.regions(story.guide, x, {"y": y}),
                 title=f"label prior: one learned N(μ_k, σ_k²) per digit (1σ, 2σ), d = {one.dim}")
    save_figure(fig, path)
    return path


def report(conditional: Evaluation, plain: Evaluation, classes: int, story: str) -> None:
    """log p(x | y) of the story beside the plain VAE's log p(x), IWAE bounds per image."""
    c, p = conditional.iwae, plain.iwae
    print(f"{conditional.num_points} test images, K = {conditional.num_samples} draws each "
          f"(IWAE bound, nats per image, ± s.e.):")
    print(f"  {story:11s}  log p(x | y)          = {c.mean:9.3f} ± {c.stderr:.3f}   "
          f"(ELBO {conditional.elbo.mean:.3f})")
    print(f"  {'plain VAE':11s}  log p(x)              = {p.mean:9.3f} ± {p.stderr:.3f}   "
          f"(ELBO {plain.elbo.mean:.3f})")
    print(f"  {story:11s}  log p(x | y) − log {classes} = {c.mean - math.log(classes):9.3f}   "
          f"≤ the story's own log p(x) = log Σ_y p(y) p(x | y) with p(y) = 1/{classes}: "
          f"comparable with the VAE's")


def main(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    story, vae = fitted_runs(args)
    x, y = test_images(story, args.points, args.seed)
    with torch.no_grad():
        path = draw(story, vae, x, y, args.out / "regions_beside_vae.png")
    print(f"{path}: left, the plain VAE's encoded test digits under its one N(0, I); right, "
          f"the same digits under the ten learned regions, one per digit")
    conditional = evaluate(story.model, story.guide, x, num_samples=args.samples, batch={"y": y},
                           seed=args.seed)
    plain = evaluate(vae.model, vae.guide, x, num_samples=args.samples, seed=args.seed)
    report(conditional, plain, story.model.classes, "label-prior")


if __name__ == "__main__":
    main(parse_args())
