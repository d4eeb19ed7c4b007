"""Which of a run folder's ``evaluation.json`` entries ``pyro-vae compare`` reads.

A run folder keeps one entry per method and setting (the IWAE bound on 1,000 images with
K = 5000, on all 10,000 with K = 5000, AIS on 1,000 with T = 1000, ...), and the entry run
last need not be the most thorough one. Of each method, several runs are read at the most
thorough setting all of them (that ran the method) share, so that their figures are of the
same images and draws; where they share none, each run at its own most thorough. Most
thorough is the most images, then the most draws (K, or T), then the most chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EVALUATED = ("iwae", "ais")
"""The methods of evaluation.json whose estimates of log p(x) have columns."""


@dataclass(frozen=True)
class ReadEstimate:
    """A mean ± standard error in nats (per image), with how it was made (e.g. ``K=5000``)."""

    mean: float
    stderr: float
    how: str = ""


def choose_evaluations(found: list[dict[str, dict]]) -> list[dict[str, str]]:
    """Per run, the key of the entry each method of :data:`EVALUATED` is read from.

    Args:
        found: per run, its evaluation.json entries by key (``iwae-test-N10000-K5000-seed0``).
    """
    chosen: list[dict[str, str]] = [{} for _ in found]
    for method in EVALUATED:
        keys = {i: {k for k, e in entries.items() if e.get("method") == method}
                for i, entries in enumerate(found)}
        keys = {i: ks for i, ks in keys.items() if ks}
        shared = set.intersection(*keys.values()) if keys else set()
        for i, ks in keys.items():
            # the key breaks ties, so that every run picks the same shared entry
            chosen[i][method] = max(shared or ks, key=lambda k: (_thoroughness(found[i][k]), k))
    return chosen


def _thoroughness(entry: dict) -> tuple[int, int, int]:
    draws = entry.get("num_samples") or entry.get("steps") or 0
    return int(entry.get("num_points") or 0), int(draws), int(entry.get("chains") or 0)


def check_entries(entries: dict[str, dict]) -> None:
    """Read every IWAE and AIS entry once, so that one of another shape raises here.

    Raises:
        KeyError, TypeError, ValueError: an entry lacks what a column reads.
    """
    for e in entries.values():
        if e.get("method") == "iwae":
            from_entries(e, None)
        elif e.get("method") == "ais":
            from_entries(None, e)


def from_entries(iwae: dict | None, ais: dict | None) -> dict[str, Any]:
    """The ``iwae``, ``ais``, k̂ and "evaluated on" fields of a compared run, from one IWAE
    and one AIS entry (either may be ``None``)."""
    out: dict[str, Any] = {"iwae": None, "ais": None, "khat_share": None, "khat_threshold": None,
                           "evaluated_images": None, "evaluated_on": None}
    how: list[str] = []  # "10000 test, K=5000; AIS 1000 test, T=1000, C=16"
    if iwae is not None:
        k, est = iwae.get("num_samples"), iwae["estimates"]["iwae"]
        out["iwae"] = ReadEstimate(float(est["mean"]), float(est["stderr"]), f"K={k}" if k else "")
        psis = iwae.get("psis")
        if psis is not None:
            out["khat_share"] = float(psis["fraction_khat_above"])
            out["khat_threshold"] = float(psis.get("khat_threshold", 0.7))
        how.append(", ".join([_images(iwae)] + ([out["iwae"].how] if out["iwae"].how else [])))
    if ais is not None:
        est = ais["estimate"]
        out["ais"] = ReadEstimate(float(est["mean"]), float(est["stderr"]),
                                  f"T={ais.get('steps')}, C={ais.get('chains')}")
        # AIS often runs on fewer images than IWAE: then its images are said apart
        if iwae is None:
            how.append(f"{_images(ais)}, {out['ais'].how}")
        elif _images(ais) != _images(iwae):
            how.append(f"AIS {_images(ais)}, {out['ais'].how}")
        else:
            how[-1] += f", {out['ais'].how}"
    if how:
        out["evaluated_images"] = _images(iwae if iwae is not None else ais)
        out["evaluated_on"] = "; ".join(how)
    return out


def _images(entry: dict) -> str:
    return f"{entry.get('num_points', '?')} {entry.get('split', '?')}"


def read_from_note(name: str, read_from: dict[str, str], latest: dict[str, str]) -> list[str]:
    """Where run ``name``'s cells are not read from the entry it ran last, which they are."""
    return [f"{name}: {method.upper()} read from its entry {key}, not from the one run last "
            f"({latest[method]}): the most thorough setting (most images, then draws) the runs "
            f"share, or its own where none is shared"
            for method, key in read_from.items() if latest.get(method) not in (None, key)]
