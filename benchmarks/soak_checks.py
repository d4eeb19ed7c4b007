"""What ``crash_soak.py`` checks in a run folder: after each kill that it is whole and agrees
with itself and with the uninterrupted run so far, and after the last resume that it is the
uninterrupted run's, bit for bit.

Each check returns a list of problems, in words (empty: all is well).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.runs import (
    BEST,
    CHECKPOINT,
    CONFIG,
    METRICS,
    CheckpointError,
    load_checkpoint,
    load_run,
)

# The fields of a metrics line that the fit computes (the others are timings).
RECORD = ("epoch", "train_elbo", "val_elbo", "beta", "lr")
# Keys of evaluation.json whose values are readings of the clock or of the machine: timings,
# clock times, and the memory budget, a share of the memory free when the command started
# (the chunk sizes it chose are settings, compared, and a resume under others starts afresh).
CLOCK_KEYS = {"seconds", "finished", "minutes", "budget_bytes"}
PNG_END = b"IEND\xaeB`\x82"


def rows(history) -> list[tuple]:
    """The computed fields of each epoch record (checkpoint history or metrics lines)."""
    return [tuple(r[k] if isinstance(r, dict) else getattr(r, k) for k in RECORD) for r in history]


def metrics_lines(run: Path) -> tuple[list[dict], list[str]]:
    """The parsed lines of metrics.jsonl and the problems seen: every line but a torn last
    one (which a kill mid-append leaves and a resume drops) must be a JSON object."""
    text = (run / METRICS).read_text()
    parts = text.split("\n")
    torn = parts.pop()  # '' when the file ends with a newline
    lines, problems = [], []
    for i, line in enumerate(parts):
        try:
            lines.append(json.loads(line))
        except ValueError:
            problems.append(f"metrics.jsonl line {i + 1} is not JSON: {line[:80]!r}")
    if torn:
        try:
            json.loads(torn)
            problems.append("metrics.jsonl's last line lacks its newline")
        except ValueError:
            pass  # a torn line: only the last one may be
    return lines, problems


def whole_pngs(run: Path) -> list[str]:
    return [f"{p.name} is not a whole PNG" for p in sorted(run.glob("*.png"))
            if not p.read_bytes().endswith(PNG_END)]


def after_kill(run: Path, reference: list[tuple]) -> tuple[str, list[str]]:
    """The state a killed fit left: ``"fresh"`` (no checkpoint yet: the command starts
    again) or ``"resumable"``, and the problems found. ``reference``: the uninterrupted
    run's rows."""
    if not (run / CHECKPOINT).exists():
        return "fresh", []
    problems: list[str] = []
    try:
        ckpt = load_checkpoint(run / CHECKPOINT)
        load_run(run)  # config, story and checkpoint together, as evaluate loads them
        if (run / BEST).exists():
            load_checkpoint(run / BEST)
        json.loads((run / CONFIG).read_text())
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        return "resumable", [f"the folder does not load: {type(err).__name__}: {err}"]
    lines, problems = metrics_lines(run)
    epochs = [line.get("epoch") for line in lines]
    done = ckpt.state.epoch
    if epochs != list(range(1, len(epochs) + 1)):
        problems.append(f"metrics.jsonl epochs are {epochs}, not 1..{len(epochs)} once each")
    if len(epochs) < done:
        problems.append(f"metrics.jsonl has {len(epochs)} epochs, the checkpoint {done}")
    if rows(lines[:done]) != rows(ckpt.state.history):
        problems.append("metrics.jsonl disagrees with the checkpoint's history")
    if rows(ckpt.state.history) != reference[:done]:
        problems.append(f"the checkpoint's {done} epochs differ from the uninterrupted run's")
    return "resumable", problems + whole_pngs(run)


def _same_tensors(a: dict, b: dict, what: str) -> list[str]:
    if a.keys() != b.keys():
        return [f"{what}: names differ"]
    return [f"{what} {k} differs (max |Δ| {float((a[k].double() - b[k].double()).abs().max()):.3g})"
            for k in a if not torch.equal(a[k], b[k])][:3]


def finished(run: Path, reference: Path) -> list[str]:
    """A completed run against the uninterrupted one: metrics (each epoch once), parameters,
    optimizer state, random states and best.safetensors, all exactly."""
    lines, problems = metrics_lines(run)
    want = rows(json.loads(line) for line in (reference / METRICS).read_text().splitlines())
    if rows(lines) != want:
        problems.append(f"metrics.jsonl ({len(lines)} lines) differs from the uninterrupted "
                        f"run's ({len(want)})")
    mine, theirs = load_checkpoint(run / CHECKPOINT), load_checkpoint(reference / CHECKPOINT)
    problems += _same_tensors(mine.modules, theirs.modules, "parameter")
    for pid, slots in theirs.optimizer["state"].items():
        problems += _same_tensors(mine.optimizer["state"].get(pid, {}), slots, f"Adam state {pid}")
    for key in ("perm_rng", "torch_rng"):
        if not torch.equal(getattr(mine.state, key), getattr(theirs.state, key)):
            problems.append(f"the checkpoint's {key} differs")
    if (reference / BEST).exists():
        if not (run / BEST).exists():
            problems.append("best.safetensors is missing")
        else:
            best, want_best = load_checkpoint(run / BEST), load_checkpoint(reference / BEST)
            problems += _same_tensors(best.modules, want_best.modules, "best parameter")
            if best.state.epoch != want_best.state.epoch:
                problems.append(f"best.safetensors is of epoch {best.state.epoch}, not "
                                f"{want_best.state.epoch}")
    names = sorted(p.name for p in reference.glob("*.png"))
    if sorted(p.name for p in run.glob("*.png")) != names:
        problems.append("the figures differ from the uninterrupted run's")
    return problems + whole_pngs(run)


def without_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k not in CLOCK_KEYS}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def evaluation_after_kill(run: Path, partial: str) -> list[str]:
    """A killed evaluate: the run folder loads, every kept unit and evaluation.json read."""
    problems = []
    try:
        load_run(run)
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        problems.append(f"the run folder does not load: {err}")
    for unit in sorted((run / partial).rglob("*.npz")):
        if unit.name.startswith("."):
            continue
        try:
            with np.load(unit, allow_pickle=False) as f:
                [f[name] for name in f.files]
        except (OSError, ValueError, EOFError) as err:
            problems.append(f"{unit.relative_to(run)} does not read: {err}")
    for settings in (run / partial).rglob("settings.json"):
        try:
            json.loads(settings.read_text())
        except ValueError:
            problems.append(f"{settings.relative_to(run)} is not JSON")
    if (run / "evaluation.json").exists():
        try:
            json.loads((run / "evaluation.json").read_text())
        except ValueError:
            problems.append("evaluation.json is not JSON")
    return problems + whole_pngs(run)


def evaluation_finished(run: Path, reference: Path, partial: str) -> list[str]:
    """The completed evaluation's entries, timings aside, are the uninterrupted one's."""
    mine, theirs = (without_clock(json.loads((r / "evaluation.json").read_text()))
                    for r in (run, reference))
    problems = [] if mine == theirs else ["evaluation.json differs from the uninterrupted one"]
    if (run / partial).exists():
        problems.append(f"{partial}/ was left behind")
    return problems + whole_pngs(run)
