"""Command-line flags generated from the options each registered part declares.

Every option field of every part becomes ``--KIND-PART-FIELD`` (e.g.
``--prior-mixture-components``); a field's ``alias`` adds one shared flag for every
part that declares it (``--components`` sets the mixture's and the VampPrior's). A
new part with new settings therefore needs no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pyro_vae.cli.common import UserError, int_list, positive_float, positive_int
from pyro_vae.stories import PARTS, option_fields

PARSERS = {"positive_int": positive_int, "positive_float": positive_float, "int_list": int_list}


def flag(kind: str, name: str, field: str) -> str:
    return f"--{kind}-{name}-{field}".replace("_", "-")


def _dest(kind: str, name: str, field: str) -> str:
    return f"option:{kind}:{name}:{field}"


def add_option_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("options of the parts (each applies when its part is chosen)")
    aliases: dict[str, list[str]] = {}
    for kind, name, f in option_fields():
        parse = PARSERS[f.metadata["parse"]]
        g.add_argument(flag(kind, name, f.name), dest=_dest(kind, name, f.name), type=parse,
                       default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']} ({_part_default(kind, name, f)})%(default).0s")
        if "alias" in f.metadata:
            aliases.setdefault(f.metadata["alias"], []).append(flag(kind, name, f.name))
            PARSERS.setdefault("alias:" + f.metadata["alias"], parse)
    for alias, flags in aliases.items():
        g.add_argument("--" + alias.replace("_", "-"), dest=f"alias:{alias}", default=None,
                       type=PARSERS["alias:" + alias], help=f"shorthand for {', '.join(flags)}%(default).0s")


def _part_default(kind: str, name: str, f: dataclasses.Field) -> str:
    """``the mlp decoder; default 64,32``: whose setting it is and its default, written as
    the flag takes it, unless the field's own help states the default."""
    if "default" in f.metadata["help"]:
        return f"the {name} {kind}"
    value = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f"the {name} {kind}; default {value}"


def options_from_args(args: argparse.Namespace, chosen: dict[str, str]) -> dict[str, Any]:
    """``{kind: {part: {field: value}}}`` for the chosen parts, every field resolved (given
    flags, then shared flags, then the part's defaults). A flag of a part that is not
    chosen is refused with a sentence."""
    given: dict[str, dict[str, Any]] = {kind: {} for kind in PARTS}
    for kind, name, f in option_fields():
        value = getattr(args, _dest(kind, name, f.name))
        if value is not None and name != chosen[kind]:
            raise UserError(f"{flag(kind, name, f.name)} is a setting of the {name} {kind}, but "
                            f"the {kind} is {chosen[kind]}")
        shared = getattr(args, f"alias:{f.metadata.get('alias')}", None)
        value = shared if value is None else value
        if value is not None and name == chosen[kind]:
            given[kind][f.name] = value
    return {kind: {chosen[kind]: dataclasses.asdict(PARTS[kind].options(chosen[kind], given[kind]))}
            for kind in PARTS if dataclasses.fields(PARTS[kind].options_of[chosen[kind]])}
