"""The ``pyro-vae`` command line. Each subcommand is a registered :class:`Command`
in its own module; ``main`` dispatches through the registry.

User mistakes (bad arguments, bad data, unknown names, unusable checkpoints)
end with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyro_vae.cli import diagnose as _diagnose  # noqa: F401  (registers the command)
from pyro_vae.cli import evaluate as _evaluate  # noqa: F401  (registers the command)
from pyro_vae.cli import sample as _sample  # noqa: F401  (registers the command)
from pyro_vae.cli import train as _train  # noqa: F401
from pyro_vae.cli.common import (
    COMMANDS,
    EXIT_USAGE,
    DefaultsOnceFormatter,
    OneLineParser,
    UserError,
    user_errors,
)

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    # The subcommands' parsers are of the same class (add_subparsers' default).
    parser = OneLineParser(
        prog="pyro-vae",
        description="Fit, sample, evaluate and diagnose variational autoencoders written in Pyro.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        # No abbreviations: --resume must know exactly which flags were given.
        p = sub.add_parser(name, help=command.help, description=command.help, allow_abbrev=False,
                           formatter_class=DefaultsOnceFormatter)
        command.add_arguments(p)
        p.set_defaults(handler=command.run, subparser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script and ``python -m pyro_vae``."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand whose flags they were meant to be, not by pyro-vae
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    try:
        with user_errors():
            return int(args.handler(args) or 0)
    except UserError as err:
        print(f"pyro-vae {args.command}: error: {err}", file=sys.stderr)
        return err.code if err.code is not None else EXIT_USAGE
