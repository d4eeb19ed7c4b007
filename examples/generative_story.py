"""The generative story, made visible: how one z explains a digit.

A VAE says each image was made by drawing a latent point z ~ N(0, I) and then
drawing pixels x ~ p(x | f(z)). This script fits (or loads) a VAE with a 2-D
latent on the bundled 8×8 digits and writes four PNGs:

1. ``blueprint.png``: the mean image f(z) at one chosen point, z = [0.1, 0.5];
2. ``many_draws.png``: many x ~ p(x | z) from that one z: different images, one blueprint;
3. ``latent_map.png``: test images encoded to z, coloured by digit: z-space cleaved into regions;
4. ``latent_walk.png``: a straight walk through z from one digit's region to another's.

Run: ``python examples/generative_story.py [--run RUN] [--epochs 300] [--out story]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_vae import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    figures,
    load_or_train,
    mean_latents,
    prior_predictive,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a fitted run with a 2-D latent")
    p.add_argument("--epochs", type=int, default=300, help="epochs when fitting a new model")
    p.add_argument("--z", type=float, nargs=2, default=(0.1, 0.5), help="the latent point to decode")
    p.add_argument("--walk", type=int, nargs=2, default=(0, 6), help="walk from this digit to that")
    p.add_argument("--out", type=Path, default=Path("story"), help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def fitted_run(args: argparse.Namespace):
    """The run to explain: ``--run`` if given, else a 2-D digits fit in ``args.out/run``."""
    cfg = RunConfig(model=ModelConfig(latent_dim=2),
                    train=TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu"))
    loaded = load_or_train(args.run, cfg, args.out, "run")
    if loaded.config.model.latent_dim != 2:
        raise SystemExit(f"{loaded.path} has a {loaded.config.model.latent_dim}-D latent; "
                         f"this story needs 2-D")
    return loaded


@torch.no_grad()
def decode(loaded, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the story with its latent site ``z`` held at the rows of ``z`` ``[N, 2]``: the
    image site's means and one draw each, ``[N, D]`` (traces, not the VAE's methods)."""
    template = loaded.data.eval_split("test")[:1].expand(len(z), -1)
    return prior_predictive(loaded.model, template, fixed={"z": z})


@torch.no_grad()
def walk(loaded, start: int, end: int, steps: int = 10) -> torch.Tensor:
    """Image means along the segment between two digits' mean encodings: ``[steps, D]``."""
    x, labels = loaded.data.eval_split("test"), loaded.data.test.labels
    z = mean_latents(loaded.guide, x)["z"]  # E_q[z | x] read off the guide's trace
    a, b = z[labels == start].mean(0), z[labels == end].mean(0)
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return decode(loaded, (1 - t) * a + t * b)[0]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    loaded = fitted_run(args)
    with torch.no_grad():
        torch.manual_seed(args.seed)
        tell_story(loaded, args)


def tell_story(loaded, args: argparse.Namespace) -> None:
    """Write the four figures and say what each shows."""
    shape, z = loaded.data.image_shape, torch.tensor(args.z)
    means, draws = decode(loaded, z.expand(32, 2))  # 32 rows, every one at the same z
    figures.save_grid(means[:1], shape, args.out / "blueprint.png", 1, f"f(z) at z = {list(args.z)}")
    print(f"{args.out / 'blueprint.png'}: the mean image f(z) at z = {list(args.z)}, the blueprint")
    figures.save_grid(draws, shape, args.out / "many_draws.png", 8, "32 draws x ~ p(x | z)")
    print(f"{args.out / 'many_draws.png'}: 32 images x ~ p(x | z) from that one z: "
          f"each pixel flips independently around the blueprint")
    figures.latent_map(loaded.guide, loaded.data.eval_split("test"), loaded.data.test.labels,
                       args.out / "latent_map.png")
    print(f"{args.out / 'latent_map.png'}: test digits encoded to E_q[z | x]; each digit claims a region")
    a, b = args.walk
    figures.save_grid(walk(loaded, a, b), shape, args.out / "latent_walk.png", 10,
                      f"a straight walk in z from {a} to {b}")
    print(f"{args.out / 'latent_walk.png'}: decoding points on the line from the {a}s' region to "
          f"the {b}s': one digit morphs into the other")


if __name__ == "__main__":
    main()
