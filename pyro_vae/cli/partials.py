"""Partial results of ``evaluate`` and ``diagnose`` in the run folder: opening them for a
command, continuing them, and the one line that refuses ``--resume`` when the settings on
disk are not this command's (nothing on disk is touched before that check)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.cli.common import EXIT_INTERRUPTED, UserError
from pyro_vae.partial import (
    NothingToResume,
    Partial,
    SettingsDiffer,
    differences,
    read_settings,
)

FLAGS = {"method": "--method", "split": "--split", "points": "--points", "samples": "--samples",
         "seed": "--seed", "hold_points": "--hold-points", "particle_chunk": "--particle-chunk",
         "point_chunk": "--point-chunk", "device": "--device", "steps": "--steps",
         "chains": "--chains", "start": "--ais-start", "leapfrog": "--leapfrog",
         "target_accept": "--target-accept", "warmup_steps": "--warmup-steps",
         "steps_grid": "--steps-grid", "ais_chunk": "--ais-chunk", "chain_chunk": "--chain-chunk",
         "warmup": "--warmup",
         "local_steps": "--local-steps", "elbo_samples": "--elbo-samples"}
"""The flag that sets each recorded setting (others are named as recorded)."""

NOT_FLAGS = {"parameters": "the model's parameters differ (the run's checkpoint changed since)",
             "images": "the images scored differ (the run's data changed since)"}


@dataclass
class Job:
    """One resumable part of a command: its settings (all that its numbers depend on), the
    name of its folder of partial results, and that folder once opened."""

    key: str
    settings: dict[str, Any]
    flags: dict[str, str] = field(default_factory=dict)
    """Flags that set a setting for this job in place of :data:`FLAGS` (BDMC's points: --bdmc)."""
    partial: Partial | None = None


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(none)" if value is None else str(value)


def describe(diffs: dict[str, tuple[Any, Any]], flags: dict[str, str] | None = None) -> str:
    """The differing settings as the command line says them: ``--samples 64 there, 128 now``."""
    flags = {**FLAGS, **(flags or {})}
    return "; ".join(NOT_FLAGS[name] if name in NOT_FLAGS else
                     f"{flags.get(name, name)} {_value(then)} there, {_value(now)} now"
                     for name, (then, now) in diffs.items())


def _refusal(folder: Path, diffs: dict[str, tuple[Any, Any]], job: Job) -> UserError:
    return UserError(f"--resume: the partial results in {folder} were made with other settings "
                     f"({describe(diffs, job.flags)}); nothing was changed (without --resume "
                     f"the command starts afresh)")


def _nearest(root: Path, settings: dict[str, Any]) -> tuple[Path, dict] | None:
    """The partial results under ``root`` whose settings differ from ``settings`` the least
    (those of the same method first)."""
    found = [(folder, read_settings(folder)) for folder in sorted(root.glob("*"))
             if folder.is_dir()] if root.is_dir() else []
    found = [(folder, s) for folder, s in found if s is not None]
    if not found:
        return None
    same = [(f, s) for f, s in found if s.get("method") == settings.get("method")] or found
    folder, best = min(same, key=lambda item: len(differences(item[1], settings)))
    return folder, differences(best, settings)


def open_jobs(jobs: list[Job], root: Path | None, resume: bool, command: str,
              finished: str = "") -> None:
    """Open each job's partial results, in ``root / key`` (or at ``root`` itself for a command
    with one unnamed job, key ``""``). With ``resume`` every job's must be on disk, made with
    its settings; otherwise the first difference refuses the command before anything is
    written (:class:`UserError`, one line). ``finished`` adds to the refusal when there is
    nothing to resume (e.g. that the entry is already in evaluation.json)."""
    assert root is not None
    if resume:
        for job in jobs:
            folder = root / job.key if job.key else root
            try:
                Partial.open(folder, job.settings, resume=True)
            except SettingsDiffer as err:
                raise _refusal(err.folder, err.differences, job) from None
            except NothingToResume:
                nearest = _nearest(root, job.settings) if job.key else None
                if nearest is None:
                    raise UserError(f"--resume: there are no partial results in {folder} to "
                                    f"continue{finished}; run without --resume to start") from None
                raise _refusal(*nearest, job) from None
    for job in jobs:
        folder = root / job.key if job.key else root
        job.partial = Partial.open(folder, job.settings, resume=resume)
        said = f"{command}: {job.key}: " if job.key else f"{command}: "
        if job.partial.discarded:
            print(f"{said}replaced the partial results made with other settings "
                  f"({describe(job.partial.discarded, job.flags)})", file=sys.stderr)
        if job.partial.resumed:
            n = job.partial.resumed
            unit = "stage" if command == "diagnose" else "chunk"
            print(f"{said}continuing from {n} finished {unit}{'s' if n != 1 else ''} in {folder}",
                  file=sys.stderr)


def interrupted(command: str, where: Path) -> int:
    """What Ctrl-C prints: what is kept and how to continue; the exit status (130)."""
    print(f"pyro-vae {command}: interrupted; the finished parts are kept in {where}: the same "
          f"command (or it with --resume) continues from them", file=sys.stderr)
    return EXIT_INTERRUPTED


def progress_flag(args: Any) -> bool | None:
    """--progress: True; --no-progress: False; neither: None (a bar only on a terminal)."""
    return True if args.progress else False if args.no_progress else None
