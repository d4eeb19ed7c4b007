"""Which objective a story with discrete latents trains with, checked before the fit starts:
a site marked ``infer={"enumerate": "parallel"}`` is summed out by ``enum`` (``TraceEnum_ELBO``),
which the default objective chooses for it."""

from __future__ import annotations

import dataclasses
from typing import Callable

import pyro
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import Data
from pyro_vae.infer import build_objective
from pyro_vae.programs import Program
from pyro_vae.stories import enumeration_error
from pyro_vae.traces import is_enumerated, slice_rows, trace_program

DEFAULT = TrainConfig().objective
"""The objective that chooses: ``enum`` for a story that marks a site for enumeration."""


def enumerated_sites(model: Program, guide: Program, data: Data) -> tuple[str, list[str]]:
    """Who marks sites for enumeration (``story`` or ``guide``) and their names, on two rows."""
    x, batch = data.train.x[:2], slice_rows(data.train.fields(), 0, 2)
    for who, program in (("guide", guide), ("story", model)):
        names = [name for name, site in trace_program(program, x, batch).nodes.items()
                 if is_enumerated(site)]
        if names:
            return who, names
    return "", []


def choose_objective(train: TrainConfig, model: Program, guide: Program, data: Data,
                     say: Callable[[str], None]) -> TrainConfig:
    """``train`` with the objective a story's discrete sites need: the default becomes
    ``enum`` (said through ``say``), another is refused; and under ``enum`` the story and
    guide are run once summed out, so that a shape that breaks only then is one line
    naming the file and line, before the run folder exists."""
    who, names = enumerated_sites(model, guide, data)
    if not names:
        return train
    if train.objective == DEFAULT:
        train = dataclasses.replace(train, objective="enum")
        say(f"the {who} marks {', '.join(map(repr, names))} for enumeration: training with "
            f"--objective enum, which sums {'it' if len(names) == 1 else 'them'} out exactly")
    elif train.objective != "enum":
        raise ValueError(f"--objective {train.objective}: the {who} marks site {names[0]!r} "
                         f"for enumeration; train it with --objective enum (the default "
                         f"{DEFAULT} chooses it), which sums it exactly")
    try:  # on two rows as a step sees them (binarized), leaving the fit's random stream
        with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
            x, batch = data.train_batch(torch.arange(2))
            build_objective(train).differentiable_loss(model, guide, x, batch=batch)
    except Exception as err:  # noqa: BLE001 - any failure of the user's story is one line
        raise enumeration_error([getattr(model, "name", ""), getattr(guide, "name", "")],
                                err, names) from None
    return train
