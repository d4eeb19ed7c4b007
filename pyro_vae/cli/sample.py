"""``pyro-vae sample RUN``: decode draws from the prior, or from one chosen z, into an image grid."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pyro_vae import figures
from pyro_vae.cli.common import COMMANDS, Command, UserError, float_list, positive_int
from pyro_vae.runs import load_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--z", type=float_list, default=None,
                   help="a latent point such as 0.1,0.5: draw x ~ p(x | z) at this z "
                        "(default: z ~ p(z) and the decoder's mean image)")
    p.add_argument("--mean", action="store_true", help="with --z: show only the mean image f(z)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN/samples.png)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


@torch.no_grad()
def draw(model, n: int, z: tuple[float, ...] | None, mean: bool, latent_dim: int) -> tuple:
    """``[n, D]`` images and a title."""
    if z is None:
        zs = model.z_dist().sample((n,))
        return model.x_dist(zs).mean, f"{n} decoder means f(z), z ~ p(z)"
    if len(z) != latent_dim:
        raise UserError(f"--z has {len(z)} values but the model's latent dimension is {latent_dim}")
    point = torch.tensor(z, dtype=torch.float32, device=model.prior.loc.device
                         if hasattr(model.prior, "loc") else None)
    px = model.x_dist(point)
    if mean:
        return px.mean.unsqueeze(0), f"f(z) at z = {list(z)}"
    return px.sample((n,)), f"{n} draws x ~ p(x | z) at z = {list(z)}"


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.run, args.device)
    torch.manual_seed(args.seed)
    images, title = draw(loaded.model, args.n, args.z, args.mean, loaded.config.model.latent_dim)
    out = args.out or loaded.path / "samples.png"
    figures.save_grid(images, loaded.data.image_shape, out, ncol=min(8, math.ceil(len(images) ** 0.5) * 2),
                      title=title)
    print(out)
    return 0


COMMANDS.register("sample")(Command("decode samples from a fitted run into an image grid",
                                    add_arguments, run))
