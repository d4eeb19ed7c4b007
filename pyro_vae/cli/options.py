"""Command-line flags generated from the options each registered part declares.

Every option field of every part becomes ``--KIND-PART-FIELD`` (e.g.
``--prior-mixture-components``, and for the fit's own parts ``--lr-schedule-step-every``);
a field's ``alias`` adds one shared flag for every part that declares it (``--components``
sets the mixture's and the VampPrior's). A new part with new settings therefore needs no
change here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping

from pyro_vae.cli.common import UserError, int_list, positive_float, positive_int
from pyro_vae.registry import Registry
from pyro_vae.stories import PARTS, option_fields

# "int" and "float" only read the number: the part checks its range in one sentence.
PARSERS = {"positive_int": positive_int, "positive_float": positive_float, "int_list": int_list,
           "int": int, "float": float}


def flag(kind: str, name: str, field: str) -> str:
    return f"--{kind}-{name}-{field}".replace("_", "-")


def _dest(kind: str, name: str, field: str) -> str:
    return f"option:{kind}:{name}:{field}"


def add_option_arguments(p: argparse.ArgumentParser, parts: Mapping[str, Registry] = PARTS,
                         title: str = "options of the parts (each applies when its part is "
                                      "chosen)") -> None:
    """A flag for every option that ``parts`` (by default the model's) declare."""
    g = p.add_argument_group(title)
    aliases: dict[str, list[str]] = {}
    for kind, name, f in option_fields(parts):
        parse = PARSERS[f.metadata["parse"]]
        g.add_argument(flag(kind, name, f.name), dest=_dest(kind, name, f.name), type=parse,
                       default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']} ({_part_default(parts[kind].kind, name, f)})"
                            "%(default).0s")
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


def options_from_args(args: argparse.Namespace, chosen: dict[str, str],
                      parts: Mapping[str, Registry] = PARTS) -> dict[str, Any]:
    """``{kind: {part: {field: value}}}`` for the chosen parts of ``parts`` (by default the
    model's), every field resolved (given flags, then shared flags, then the part's
    defaults). An unknown part, or a flag of a part that is not chosen, is refused with a
    sentence."""
    for kind, registry in parts.items():
        registry.lookup(chosen[kind])
    given: dict[str, dict[str, Any]] = {kind: {} for kind in parts}
    for kind, name, f in option_fields(parts):
        value = getattr(args, _dest(kind, name, f.name))
        if value is not None and name != chosen[kind]:
            what = parts[kind].kind
            raise UserError(f"{flag(kind, name, f.name)} is a setting of the {name} {what}, but "
                            f"the {what} is {chosen[kind]}")
        shared = getattr(args, f"alias:{f.metadata.get('alias')}", None)
        value = shared if value is None else value
        if value is not None and name == chosen[kind]:
            given[kind][f.name] = value
    return {kind: {chosen[kind]: dataclasses.asdict(parts[kind].options(chosen[kind], given[kind]))}
            for kind in parts if dataclasses.fields(parts[kind].options_of[chosen[kind]])}
