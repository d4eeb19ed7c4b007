"""``pyro-vae export RUN --format onnx|pt2 [--part decoder|encoder|both] [--out DIR]``: a fitted
run's decoder and encoder as ONNX or ``torch.export`` files with ``model_card.json`` beside
them (``--check``: each file run back and compared with PyTorch on random inputs)."""

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
    positive_int,
)
from pyro_vae.export import FORMATS, ROLES, TOLERANCE, export_run

EXIT_DISAGREES = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help='onnx (needs pip install -e ".[export]") or pt2 (torch.export; needs '
                        'only torch)')
    p.add_argument("--part", choices=(*ROLES, "both"), default="both",
                   help="decoder: latents → the parameters of p(x | z) and its mean image; "
                        "encoder: x → the parameters of q(z | x)")
    p.add_argument("--out", type=Path, default=None, help="folder for the files and "
                                                           "model_card.json (default: RUN/export)")
    add_checkpoint_argument(p)
    add_trust_argument(p)
    p.add_argument("--check", action="store_true",
                   help=f"run each file back (onnxruntime, torch.export.load) and compare it "
                        f"with the PyTorch module on random inputs; the largest differences go "
                        f"into model_card.json, and the exit status is {EXIT_DISAGREES} if one "
                        f"exceeds {TOLERANCE:g} (or PyTorch's own float32 error, where larger)")
    p.add_argument("--batch", type=positive_int, default=5,
                   help="rows of the --check inputs (any number: the batch axis is dynamic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --check inputs")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="say each part as it is exported even when stderr is not a terminal")
    shown.add_argument("--no-progress", action="store_true", help="say nothing while exporting")


def run(args: argparse.Namespace) -> int:
    shown = args.progress or (sys.stderr.isatty() and not args.no_progress)
    roles = ROLES if args.part == "both" else (args.part,)
    result = export_run(args.run, args.format, roles, args.out, which=args.checkpoint,
                        trust_story=args.trust_story, check=args.check, batch=args.batch,
                        seed=args.seed,
                        say=(lambda line: print(line, file=sys.stderr)) if shown else None)
    for path in result.files:
        print(path)
    print(result.card)
    if args.check:
        print(result.table())
        if not all(a.agrees for a in result.agreements):
            return EXIT_DISAGREES
    return 0


COMMANDS.register("export")(Command(HELP["export"], add_arguments, run))
