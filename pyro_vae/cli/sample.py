"""``pyro-vae sample RUN``: draw from the story's prior predictive, or with chosen latent
sites held fixed, into an image grid. Works for any story: it runs the program itself."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pyro_vae import figures
from pyro_vae.cli.common import (
    COMMANDS,
    HELP,
    Command,
    UserError,
    add_checkpoint_argument,
    add_trust_argument,
    float_list,
    positive_int,
)
from pyro_vae.evaluation import label_site
from pyro_vae.predictive import prior_predictive
from pyro_vae.runs import LoadedRun, check_out_file, load_run
from pyro_vae.traces import index_rows, is_enumerated, latent_sites, trace_program


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    add_checkpoint_argument(p)
    add_trust_argument(p)
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--set", action="append", default=[], metavar="SITE=V1,V2,...",
                   help="hold latent site SITE at this value (its elements, comma-separated) and "
                        "draw x given it; repeatable; other latents are drawn from the prior "
                        "(a discrete site summed out in fitting, too: --set c=3 draws from "
                        "cluster 3)")
    p.add_argument("--z", type=float_list, default=None,
                   help="shorthand for --set z=... (the built-in VAE's latent site)")
    p.add_argument("--label", type=int, default=None, metavar="K",
                   help="for a story that reads labels (y): draw every image with label K")
    p.add_argument("--mean", action="store_true",
                   help="with --set: show only the image mean at the fixed values")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN/samples.png)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def fixed_values(loaded: LoadedRun, texts: list[str], n: int) -> dict[str, torch.Tensor]:
    """``["z=0.1,0.5"]`` → ``{"z": [n, 2]}``, checked against the story's latent sites."""
    x, batch = _template(loaded, 2)
    sites = {s.name: s for s in latent_sites(loaded.model, x, batch, who="pyro-vae sample")}
    # A site summed out in fitting is drawn here; fixing it conditions the draw on it.
    summed = {name: site for name, site in trace_program(loaded.model, x, batch).nodes.items()
              if is_enumerated(site)}
    fixed = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        if not sep or name not in {**sites, **summed}:
            raise UserError(f"--set {text!r}: expected SITE=V1,V2,... with SITE one of the "
                            f"story's latent sites {sorted({**sites, **summed})}")
        if name in summed:
            fixed[name] = _discrete_value(name, raw, summed[name], n)
            continue
        values = float_list(raw)
        shape = tuple(sites[name].event_shape)
        if len(values) != math.prod(shape):
            raise UserError(f"--set {name}: {len(values)} values given, but site {name!r} has "
                            f"{math.prod(shape)} (event shape {list(shape)})")
        value = torch.tensor(values, device=loaded.device).reshape(shape)
        if not bool(sites[name].support.check(value).all()):
            raise UserError(f"--set {name}: {list(values)} is outside the site's support "
                            f"({sites[name].support})")
        fixed[name] = value.expand((n, *shape))
    return fixed


def _discrete_value(name: str, raw: str, site: dict, n: int) -> torch.Tensor:
    """``--set c=3`` for a discrete site: its value for every one of the ``n`` rows."""
    fn, like = site["fn"], site["value"]
    shape = tuple(fn.event_shape)
    try:
        values = [int(v) for v in raw.split(",")]
    except ValueError:
        raise UserError(f"--set {name}={raw}: site {name!r} is discrete; give whole numbers") from None
    if len(values) != math.prod(shape):
        raise UserError(f"--set {name}: {len(values)} values given, but site {name!r} has "
                        f"{math.prod(shape)} (event shape {list(shape)})")
    value = torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)
    if not bool(fn.support.check(value).all()):
        raise UserError(f"--set {name}: {values if shape else values[0]} is outside the "
                        f"site's support ({fn.support})")
    return value.expand((n, *shape))


def _template(loaded: LoadedRun, n: int, label: int | None = None) -> tuple[torch.Tensor, dict]:
    """``n`` test rows (tiled) and their per-row fields: shapes for the story's plate; with
    ``label``, every row's ``y`` is that label."""
    x = loaded.data.eval_split("test")
    rows = torch.arange(n, device=x.device) % len(x)
    fields = index_rows(loaded.data.test.fields(), rows)
    if label is not None:
        _check_label(loaded, label)
        fields["y"] = torch.full((n,), label, dtype=torch.long, device=x.device)
    return x[rows], fields


def _check_label(loaded: LoadedRun, label: int) -> None:
    accepts = loaded.model.accepts
    if accepts is not None and "y" not in accepts:
        raise UserError(f"--label {label}: the story {loaded.model.name} does not read labels (y)")
    classes = getattr(loaded.model, "classes", None)
    if isinstance(classes, int) and not 0 <= label < classes:
        raise UserError(f"--label {label}: the story has {classes} classes, 0..{classes - 1}")


def _drawn(loaded: LoadedRun, n: int, label: int | None, fixed: dict, sets: list[str]):
    """(image means, draws) ``[n, *image]`` of the story at the ``fixed`` values."""
    try:
        mean, draw = prior_predictive(loaded.model, *_template(loaded, n, label), fixed)
    except (ValueError, RuntimeError) as err:
        if not sets:  # nothing of the user's was put in: a fault of the story or the engine
            raise
        message = str(err).splitlines()[0].split(".  ")[0] if str(err) else "no message"
        raise UserError(f"--set/--z {', '.join(sets)}: the story cannot draw images there "
                        f"({type(err).__name__}: {message}); values far outside the prior's "
                        "range make the decoder's output non-finite") from None
    return mean, draw


def run(args: argparse.Namespace) -> int:
    check_out_file(args.run, args.out)
    loaded = load_run(args.run, args.device, args.checkpoint, trust_story=args.trust_story)
    sets = args.set + ([f"z={','.join(map(str, args.z))}"] if args.z is not None else [])
    torch.manual_seed(args.seed)
    n = 1 if sets and args.mean else args.n
    fixed = fixed_values(loaded, sets, n)
    site = label_site(loaded.model)
    if args.label is not None and site is not None:  # the label is a latent site: hold it
        fixed[site] = torch.full((n,), args.label, dtype=torch.long, device=loaded.device)
    mean, draw = _drawn(loaded, n, args.label, fixed, sets)
    where = ", ".join(sets + ([f"y={args.label}"] if args.label is not None else [])) or "latents ~ p"
    images, title = ((mean, f"image mean at {where}") if args.mean or not sets
                     else (draw, f"{n} draws x ~ p(x | {where})"))
    if not sets:
        title = f"{n} image means, latents drawn from the prior" + \
            (f", label {args.label}" if args.label is not None else "")
    out = args.out or loaded.path / "samples.png"
    figures.save_grid(images.reshape(len(images), -1), loaded.data.image_shape, out,
                      ncol=min(8, math.ceil(len(images) ** 0.5) * 2), title=title)
    print(out)
    return 0


COMMANDS.register("sample")(Command(HELP["sample"], add_arguments, run))
