"""Fitted weights handed to a story's builder, and parts held fixed.

A shipped story may start some of its parts from a fitted run (M1 + M2 starts from a VAE
run). The builder declares which of its keywords name such a run (its ``weights``
attribute); the engine reads the run's checkpoint (tensors only: nothing in it executes) and
passes a :class:`Weights`. When a run folder of the story itself is rebuilt, its own
checkpoint holds every part, so the source is not read again (``tensors`` is ``None``) and
the run needs nothing outside its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor, nn


@dataclass(frozen=True)
class Weights:
    """A fitted run's parameters, by state-dict name (``model.decoder.net.0.weight``,
    ``guide.encoder.net.0.weight``; without :class:`~pyro_vae.programs.Program`'s level)."""

    source: str
    """The run or file as the user named it (recorded in the config)."""
    tensors: Mapping[str, Tensor] | None
    """``None`` when the story is being rebuilt from its own checkpoint."""

    def load(self, module: nn.Module, prefix: str) -> None:
        """Load the entries under ``prefix`` (``"model.decoder."``) into ``module``, or
        nothing when rebuilding; a missing, misshapen or extra entry is a ``ValueError``
        naming it."""
        if self.tensors is None:
            return
        saved = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        extra = sorted(saved.keys() - expected.keys())
        wrong = first_mismatch(expected, saved, prefix) or (
            extra and f"holds parameter {prefix + extra[0]!r}, which this story has no place for")
        if wrong:
            raise ValueError(f"{self.source}: {wrong}: it was fitted with other parts than "
                             f"this story asks for")
        module.load_state_dict(saved)


def first_mismatch(expected: Mapping[str, Tensor], saved: Mapping[str, Tensor],
                   prefix: str = "") -> str | None:
    """The first entry of ``expected`` that ``saved`` lacks or holds in another shape, in
    words ("lacks parameter 'x' (shape [2])"); ``None`` when all are there."""
    for name, value in expected.items():
        if name not in saved:
            return f"lacks parameter {prefix + name!r} (shape {list(value.shape)})"
        if saved[name].shape != value.shape:
            return (f"parameter {prefix + name!r} has shape {list(saved[name].shape)} but this "
                    f"model expects {list(value.shape)}")
    return None


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with each parameter turned into a buffer of the same name: the optimizer
    and Pyro's param store never see it, and the checkpoint still holds it."""
    for part in module.modules():
        for name, param in list(part._parameters.items()):
            if param is not None:
                del part._parameters[name]
                part.register_buffer(name, param.detach().clone())
    return module
