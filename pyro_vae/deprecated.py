"""Old import paths of the names that moved when the engine was laid out in wings (0.2).

Each old module (``pyro_vae.objectives``, ``pyro_vae.build``, ...) is now a file of two
lines whose module ``__getattr__`` is a :func:`forwarder`: a name looked up there is
fetched from its new home with a :class:`DeprecationWarning` that names the new path.
They go in 0.3. The new homes are given as strings and imported only when a name is
asked for, so an old path costs nothing until it is used and adds no import to the layers.

Three old modules cannot stay, because the top-level face exports a function of the same
name and a module would shadow it: ``pyro_vae.fit``, ``pyro_vae.evaluate`` and
``pyro_vae.diagnose`` are now the functions; their other names are in ``pyro_vae.infer``,
``pyro_vae.evaluation`` and ``pyro_vae.diagnostics``. ``pyro_vae.ais`` likewise: its
module is ``pyro_vae.evaluation.annealing``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping

ALIASES: dict[str, tuple[str, ...]] = {
    "pyro_vae.build": ("pyro_vae.stories",),
    "pyro_vae.catalog": ("pyro_vae.stories",),
    "pyro_vae.objectives": ("pyro_vae.infer", "pyro_vae.jit"),
    "pyro_vae.precision": ("pyro_vae.infer",),
    "pyro_vae.fused": ("pyro_vae.infer",),
    "pyro_vae.classify": ("pyro_vae.evaluation",),
    "pyro_vae.report": ("pyro_vae.diagnostics",),
    "pyro_vae.checkpoint": ("pyro_vae.runs", "pyro_vae.files"),
    "pyro_vae.lock": ("pyro_vae.runs",),
    "pyro_vae.streams": ("pyro_vae.data",),
}
"""Each old module and where its names are now, searched in order."""

MOVED_NAMES: dict[str, dict[str, str]] = {
    "pyro_vae.figures": {"plot_k_curve": "pyro_vae.evaluation", "plot_khat": "pyro_vae.evaluation"},
    "pyro_vae.distributed": {"Loss": "pyro_vae.infer.parallel",
                             "data_parallel": "pyro_vae.infer"},
    "pyro_vae.traces": {"scores_binary": "pyro_vae.pixels"},
    "pyro_vae.validation": {"check_binary": "pyro_vae.pixels"},
}
"""Modules that stayed, with the names that left them."""


def forwarder(old: str, new: tuple[str, ...] | Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old``: a name that moved to one of the modules ``new``
    (or to ``new[name]``) is fetched from there, with a :class:`DeprecationWarning`."""

    def __getattr__(name: str) -> Any:
        homes = (new[name],) if isinstance(new, Mapping) and name in new else \
            () if isinstance(new, Mapping) or name.startswith("__") else new
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, name):
                warnings.warn(f"{old}.{name} has moved to {home}.{name}; the old path goes in 0.3",
                              DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
