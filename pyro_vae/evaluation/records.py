"""A run's ``evaluation.json``: one entry per method and settings, each kept until the same one
is run again.

.. code-block:: text

    {"entries": {"iwae-test-N1000-K5000-seed0": {...}, "ais-test-N100-T1000-...": {...}, ...},
     "latest":  {"iwae": KEY, "ais": KEY, "bdmc": KEY},
     ... the latest iwae entry's fields at the top level (split, seed, num_samples,
     num_points, estimates, psis, curve, key), and "ais" / "bdmc": the latest entry of each}

An entry's key names its method and every setting that changes what it estimates
(:func:`entry_key`); its ``settings`` hold those and the ones that change only its draws
(chunk sizes, device) and what was scored (digests of the parameters and the images).
The top-level fields are those of the format before entries, so that its readers keep
working; a file in that format is read as entries (``migrated``: its settings are partly
unknown).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from pyro_vae.files import atomic_write

EVALUATION_FILE = "evaluation.json"
FORMAT = 2
METHODS = ("iwae", "ais", "bdmc")

_AIS_KEY = (("split", ""), ("points", "N"), ("steps", "T"), ("chains", "C"), ("start", ""),
            ("leapfrog", "L"), ("target_accept", "a"), ("warmup_steps", "w"),
            ("steps_grid", "grid"), ("seed", "seed"))
KEY_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "iwae": (("split", ""), ("points", "N"), ("samples", "K"), ("seed", "seed")),
    "ais": _AIS_KEY,
    "bdmc": _AIS_KEY,
}
"""The settings named in each method's key, with their prefixes."""


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "?" if value is None else str(value)


def entry_key(settings: Mapping[str, Any]) -> str:
    """``iwae-test-N1000-K5000-seed0``: the method and the settings that change the estimate."""
    method = settings["method"]
    return "-".join([method, *(f"{prefix}{_text(settings.get(name))}"
                               for name, prefix in KEY_SETTINGS[method])])


def read_evaluations(path: Path) -> dict[str, Any]:
    """The entries and latest keys of ``evaluation.json`` at ``path`` (empty when there is
    none; a file of the one-result format as its entries).

    Raises:
        ValueError: the file is not JSON (it is left as it is).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {"entries": {}, "latest": {}}
    except ValueError as err:
        raise ValueError(f"{path} is not JSON ({err}); move it away to record new entries") from None
    try:
        return evaluation_entries(doc)
    except ValueError as err:
        raise ValueError(f"{path} {err}; move it away to record new entries") from None


def evaluation_entries(doc: Any) -> dict[str, Any]:
    """The entries and latest keys of an ``evaluation.json`` already parsed (``doc``), a
    document of the one-result format as its entries.

    Raises:
        ValueError: ``doc`` is not of either format.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("entries", {}), dict) \
            or not isinstance(doc.get("latest", {}), dict):
        raise ValueError("is not an evaluation.json (a JSON object with 'entries' and "
                         "'latest' objects)")
    if "entries" in doc:
        return {"entries": dict(doc["entries"]), "latest": dict(doc.get("latest", {}))}
    return _migrate(doc)


def _migrate(old: dict[str, Any]) -> dict[str, Any]:
    """Entries from the one-result format: its IWAE fields, its ``ais`` and ``bdmc`` blocks."""
    entries, latest = {}, {}
    common = {"split": old.get("split"), "seed": old.get("seed")}

    def add(method: str, fields: dict[str, Any], settings: dict[str, Any]) -> None:
        settings = {"method": method, **common, **settings}
        key = entry_key(settings)
        entries[key] = {"method": method, "key": key, **common, **fields, "settings": settings,
                        "migrated": True}
        latest[method] = key

    if "estimates" in old:
        add("iwae", {k: v for k, v in old.items() if k not in ("ais", "bdmc")},
            {"points": old.get("num_points"), "samples": old.get("num_samples")})
    if isinstance(old.get("ais"), dict):
        a = old["ais"]
        add("ais", a, {"points": a.get("num_points"), "steps": a.get("steps"),
                       "chains": a.get("chains"), "start": a.get("start"),
                       "leapfrog": a.get("leapfrog"), "target_accept": a.get("target_accept"),
                       "warmup_steps": a.get("warmup_steps"),
                       "steps_grid": a.get("curve", {}).get("steps")})
    if isinstance(old.get("bdmc"), dict):
        b = old["bdmc"]
        grid = [row.get("steps") for row in b.get("per_steps", [])]
        add("bdmc", b, {"points": b.get("num_points"), "steps": max(grid, default=None),
                        "chains": b.get("chains"), "start": b.get("start"), "steps_grid": grid})
    return {"entries": entries, "latest": latest}


def document(entries: Mapping[str, dict], latest: Mapping[str, str]) -> dict[str, Any]:
    """The whole file: the latest IWAE entry's fields at the top level, the latest AIS and
    BDMC entries as ``ais`` and ``bdmc``, then ``latest`` and ``entries``."""
    out: dict[str, Any] = {}
    if latest.get("iwae") in entries:
        out.update(entries[latest["iwae"]])
    for method in ("ais", "bdmc"):
        if latest.get(method) in entries:
            out[method] = entries[latest[method]]
    return {**out, "format": FORMAT, "latest": dict(latest), "entries": dict(entries)}


def make_entry(method: str, settings: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """One entry: its method, key, split and seed, the result's ``fields``, its settings and
    when it finished."""
    return {"method": method, "key": entry_key(settings), "split": settings.get("split"),
            "seed": settings.get("seed"), **fields, "settings": dict(settings),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def record_entries(path: Path, new: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the entries ``new`` (from :func:`make_entry`) to ``evaluation.json`` at ``path``,
    each replacing the entry of the same key, and write the file atomically; returns it."""
    found = read_evaluations(path)
    entries, latest = found["entries"], found["latest"]
    for entry in new:
        entries.pop(entry["key"], None)  # the newest last
        entries[entry["key"]] = entry
        latest[entry["method"]] = entry["key"]
    doc = document(entries, latest)
    atomic_write(Path(path), (json.dumps(doc, indent=2) + "\n").encode())
    return doc
