"""``pyro-vae compare RUN...``: several run folders in one table (printed, and written with the
validation-ELBO curves of all runs into ``--out``; ``--html`` adds a self-contained page)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.cli.common import COMMANDS, HELP, Command
from pyro_vae.runs import compare_runs, write_comparison


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run folders written by pyro-vae train (any story; evaluate and diagnose "
                        "add their columns where they were run)")
    p.add_argument("--out", type=Path, default=Path("compare"),
                   help="folder for compare.json, val_elbo.png (and compare.html)")
    p.add_argument("--html", action="store_true",
                   help="also write compare.html: the table and the figure in one page that "
                        "needs no network")


def run(args: argparse.Namespace) -> int:
    comparison = compare_runs(args.runs)
    files = write_comparison(comparison, args.out, html_page=args.html)
    print(comparison.text())
    written = [files.json, files.figure] + ([files.html] if files.html else [])
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


COMMANDS.register("compare")(Command(HELP["compare"], add_arguments, run))
