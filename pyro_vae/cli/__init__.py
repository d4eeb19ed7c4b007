"""The ``pyro-vae`` command line. Each subcommand is a registered :class:`Command`
in its own module; ``main`` dispatches through the registry.

User mistakes (bad arguments, bad data, unknown names, unusable checkpoints)
end with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from pyro_vae.cli.common import (
    COMMANDS,
    EXIT_USAGE,
    HELP,
    DefaultsOnceFormatter,
    OneLineParser,
    UserError,
    user_errors,
)

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand with its flags, or, given ``only``, with the flags of
    that one alone and the others by name and help: a command's module loads torch and the
    wings it runs on, which ``pyro-vae --help`` (and a mistyped command) does not need."""
    # The subcommands' parsers are of the same class (add_subparsers' default).
    parser = OneLineParser(
        prog="pyro-vae",
        description="Fit, sample, evaluate and diagnose variational autoencoders written in Pyro.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in HELP.items():
        # No abbreviations: --resume must know exactly which flags were given.
        p = sub.add_parser(name, help=text, description=text, allow_abbrev=False,
                           formatter_class=DefaultsOnceFormatter)
        if only is None or name == only:
            command = command_named(name)
            command.add_arguments(p)
            p.set_defaults(handler=command.run, subparser=p)
    return parser


def command_named(name: str):
    """The :class:`~pyro_vae.cli.common.Command` ``name``, its module imported (which
    registers it)."""
    importlib.import_module(f"{__name__}.{name}")
    return COMMANDS[name]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script and ``python -m pyro_vae``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=named if named in HELP else "")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand whose flags they were meant to be, not by pyro-vae
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    from pyro_vae.jit import one_line_fallbacks  # torch: the command's module has loaded it

    try:
        with user_errors(), warnings.catch_warnings():
            warnings.showwarning = one_line_fallbacks(warnings.showwarning)
            return int(args.handler(args) or 0)
    except UserError as err:
        # One line: a library's message may append more (Pyro adds a table of trace shapes).
        from pyro_vae.stories import first_sentence

        print(f"pyro-vae {args.command}: error: {first_sentence(str(err)) or 'failed'}",
              file=sys.stderr)
        return err.code if err.code is not None else EXIT_USAGE
