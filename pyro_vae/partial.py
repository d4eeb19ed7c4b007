"""The results of a long computation, kept as they are made, so that a stopped one (Ctrl-C,
``kill -9``, a full disk, a lost machine) continues where it stopped and loses at most the
unit it was working on.

.. code-block:: text

    <folder>/settings.json     what every unit was computed with (checked on every open)
    <folder>/<unit>.npz        the arrays of one finished unit (numpy's format, never pickled)

Each file is written whole or not at all (:func:`pyro_vae.files.atomic_write`). A unit's
numbers must depend only on the settings and the unit itself (its randomness seeded by
:func:`pyro_vae.programs.unit_seed`), so that a unit read back is the unit that would
have been computed. The computation uses the arrays :meth:`Partial.save` returns, which
are those :meth:`Partial.load` gives back later, so a continued computation gives exactly
the numbers of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from pyro_vae.files import atomic_write

SETTINGS = "settings.json"

Arrays = dict[str, np.ndarray]


class SettingsDiffer(ValueError):
    """The partial results in ``folder`` were made with other settings: ``differences`` maps
    each differing setting to its value on disk and its value now."""

    def __init__(self, folder: Path, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.folder, self.differences = Path(folder), dict(differences)
        said = "; ".join(f"{name}: {old!r} there, {new!r} now"
                         for name, (old, new) in self.differences.items())
        super().__init__(f"the partial results in {self.folder} were made with other settings "
                         f"({said})")


class NothingToResume(FileNotFoundError):
    """There are no partial results in ``folder`` to continue."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        super().__init__(f"no partial results in {self.folder} to continue")


def as_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples become lists), for comparing."""
    return json.loads(json.dumps(dict(settings)))


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (before, now)}`` for every setting that differs (None where one lacks it)."""
    before, now = as_settings(before), as_settings(now)
    names = [*before, *(name for name in now if name not in before)]
    return {name: (before.get(name), now.get(name)) for name in names
            if before.get(name) != now.get(name)}


def read_settings(folder: Path) -> dict[str, Any] | None:
    """The settings partial results in ``folder`` were made with; None when it holds none."""
    try:
        return json.loads((Path(folder) / SETTINGS).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


class Partial:
    """A folder of finished units made with ``settings`` (see the module docstring).

    ``resumed`` counts the units found on disk when it was opened; ``discarded`` holds the
    differences of results made with other settings that opening replaced (empty if none).
    """

    def __init__(self, folder: Path, settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = as_settings(settings)
        self.resumed = 0
        self.discarded: dict[str, tuple[Any, Any]] = {}

    @classmethod
    def open(cls, folder: Path, settings: Mapping[str, Any], *, resume: bool) -> "Partial":
        """The partial results in ``folder``, to be continued under ``settings``.

        With ``resume`` they must be there, made with the same settings, and nothing on
        disk is changed here (raises :class:`NothingToResume` or :class:`SettingsDiffer`).
        Without it, results made with the same settings are continued, and results made
        with other ones are replaced (``discarded`` says how they differed).
        """
        partial = cls(folder, settings)
        found = read_settings(partial.folder)
        if resume:
            if found is None:
                raise NothingToResume(partial.folder)
            if found != partial.settings:
                raise SettingsDiffer(partial.folder, differences(found, partial.settings))
        elif found != partial.settings:
            if found is not None:
                partial.discarded = differences(found, partial.settings)
            # Units of other settings, or of unknown ones (no settings.json), are not ours.
            shutil.rmtree(partial.folder, ignore_errors=True)
            partial.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(partial.folder / SETTINGS,
                         (json.dumps(partial.settings, indent=1) + "\n").encode())
        partial.resumed = len(partial.units())
        return partial

    def units(self) -> list[str]:
        """The names of the finished units, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.npz") if not p.name.startswith("."))

    def path(self, unit: str) -> Path:
        return self.folder / f"{unit}.npz"

    def load(self, unit: str) -> Arrays | None:
        """The arrays of a finished unit; None when it is not finished (or its file cannot
        be read, so that it is computed again)."""
        try:
            with np.load(self.path(unit), allow_pickle=False) as f:
                return {name: f[name] for name in f.files}
        except (FileNotFoundError, OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    def save(self, unit: str, arrays: Mapping[str, Any]) -> Arrays:
        """Write a finished unit's arrays (tensors, arrays or numbers) at once, and return them
        as :meth:`load` will give them back."""
        out = as_arrays(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        atomic_write(self.path(unit), buffer.getvalue())
        return out

    def remove(self) -> None:
        """Remove the folder: the computation is done and its result kept elsewhere."""
        shutil.rmtree(self.folder, ignore_errors=True)


def as_arrays(arrays: Mapping[str, Any]) -> Arrays:
    """Tensors, arrays and numbers as numpy arrays on the CPU (what a unit file holds)."""
    return {name: (value.detach().cpu().numpy() if isinstance(value, Tensor)
                   else np.asarray(value)) for name, value in arrays.items()}


def state_digest(*modules: nn.Module) -> str:
    """SHA-256 of the modules' parameters and buffers (names, dtypes, shapes and bytes): the
    same exactly when they would compute the same numbers."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{i}/{name}|{t.dtype}|{list(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensor_digest(t: Tensor) -> str:
    """SHA-256 of one tensor's dtype, shape and bytes (which images were scored)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{list(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
