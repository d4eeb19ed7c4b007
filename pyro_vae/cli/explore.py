"""``pyro-vae explore RUN``: write the run's ``explorer.html``, a self-contained page in which
the pointer moves through the latent space and the decoder's images follow it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.cli.common import (
    COMMANDS,
    HELP,
    Command,
    add_checkpoint_argument,
    add_trust_argument,
)
from pyro_vae.explore import EXPLORER_FILE, write_explorer
from pyro_vae.runs import LoadedRun, check_out_file, load_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    add_checkpoint_argument(p)
    add_trust_argument(p)
    p.add_argument("--site", default=None, metavar="NAME",
                   help="the real-valued latent site to move through (default: the story's "
                        "first)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where to write the page (default: RUN/{EXPLORER_FILE})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the test images' binarization (the one evaluate scores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def caption(loaded: LoadedRun) -> str:
    """The line under the page's title: the run, its checkpoint and epoch, the data."""
    scored = loaded.scored
    return (f"{loaded.path} · checkpoint {scored.get('checkpoint', 'last')}, epoch "
            f"{scored.get('epoch', '?')} · {loaded.data.source}")


def run(args: argparse.Namespace) -> int:
    check_out_file(args.run, args.out)
    loaded = load_run(args.run, args.device, args.checkpoint, trust_story=args.trust_story)
    page = write_explorer(loaded.model, loaded.guide, loaded.data,
                          args.out or loaded.path / EXPLORER_FILE, site=args.site,
                          seed=args.seed, caption=caption(loaded))
    how = ("the decoder runs in the page" if page.mode == "mlp" else
           f"the decoder read off a {page.resolution} × {page.resolution} grid")
    print(f"site {page.site}: {how}; {page.size / 1e6:.1f} MB, open it in a browser",
          file=sys.stderr)
    print(page.path)
    return 0


COMMANDS.register("explore")(Command(HELP["explore"], add_arguments, run))
