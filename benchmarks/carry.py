"""Carry long benchmark runs from one session to the next (issue 22).

On this workplace every session starts from a fresh clone: the ignored ``benchmarks/runs/``
is gone, and a run that needs more hours than a session has starts again from 0 each time
(``burda-vae`` lost 945, 569 and 412 epochs so). This script keeps what a run needs to resume
in the tracked ``benchmarks/carried/``, under the same path it has below ``benchmarks/runs/``:

    python benchmarks/carry.py save benchmarks/runs/reproduce/burda-vae          # weights too
    python benchmarks/carry.py save --records benchmarks/runs/m2_protocol/m1m2/m2-100-s1
    python benchmarks/carry.py restore      # at a session's start, before any run starts
    python benchmarks/carry.py list

``save`` copies a folder's records (``*.json``, ``*.jsonl``, ``*.log``: the config, the
per-epoch metrics, summaries, baselines, a peer's log) and, unless ``--records``, its
``checkpoint.safetensors`` and ``best.safetensors``. It refuses to replace a carried checkpoint
with one of fewer epochs (a run restarted from 0 by mistake) unless ``--force``. ``restore``
puts every carried folder back where its run folder is missing, or holds a checkpoint of fewer
epochs; a run folder that is further along is left alone, and records missing from it are
added. The partial results of an unfinished ``pyro-vae evaluate`` or ``diagnose`` (their
``evaluation.partial/`` and ``diagnostics.partial/``: a ``settings.json`` and one ``.npz`` per
finished chunk) travel with the folder too, so hours of AIS resume in the next session; a
save mirrors them (a finished evaluation removes its partial folder, and so does the carried
copy), and a restore brings them back with the checkpoint they were made on. Only JSON, text
logs, numpy arrays (read without pickle) and safetensors travel: nothing carried can run code
when read.
Copies are written as the engine writes its files (a temporary name, then a rename), so an
interrupted copy leaves the old file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pyro_vae import CHECKPOINT, CheckpointError, load_checkpoint
from pyro_vae.files import atomic_write
from pyro_vae.runs import BEST, DIAGNOSIS_PARTIAL, EVALUATION_PARTIAL

BENCH = Path(__file__).resolve().parent
RUNS, CARRIED = BENCH / "runs", BENCH / "carried"
RECORDS = (".json", ".jsonl", ".log")
WEIGHTS = (CHECKPOINT, BEST)
PARTIALS = (EVALUATION_PARTIAL, DIAGNOSIS_PARTIAL)
PARTIAL_FILES = (".json", ".npz")


class CarryError(Exception):
    """Bad input: one line, exit 2, nothing overwritten."""


def epochs(folder: Path) -> int:
    """The epochs ``folder``'s checkpoint has finished; 0 where it has none."""
    if not (folder / CHECKPOINT).is_file():
        return 0
    try:
        return load_checkpoint(folder / CHECKPOINT).state.epoch
    except CheckpointError as err:
        raise CarryError(f"{folder / CHECKPOINT} cannot be read: {err}") from None


def carried_files(folder: Path, weights: bool) -> list[Path]:
    """The files of ``folder`` (not of its subfolders) that travel."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in RECORDS or (weights and p.name in WEIGHTS)))


def partial_files(folder: Path) -> list[Path]:
    """The files of the partial results below ``folder`` (of each unfinished evaluate or
    diagnose job: ``evaluation.partial/<job>/`` or ``diagnostics.partial/`` itself)."""
    return sorted(p for name in PARTIALS if (folder / name).is_dir()
                  for p in (folder / name).rglob("*")
                  if p.is_file() and p.suffix in PARTIAL_FILES and p.name[0] != ".")


def copy_partials(source: Path, target: Path) -> int:
    """Make ``target``'s partial results those of ``source``: jobs finished (or gone) there
    go here too, and each job folder is replaced whole, so that no chunk of other settings
    lingers beside a newer ``settings.json``. The number of job folders copied."""
    for name in PARTIALS:
        shutil.rmtree(target / name, ignore_errors=True)
    files = partial_files(source)
    for path in files:
        copy(path, target / path.relative_to(source))
    return len({path.parent for path in files})


def copy(source: Path, target: Path) -> None:
    """``source`` to ``target`` (the engine's atomic write: a kill leaves the old file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, source.read_bytes())


def relative(run: Path, runs: Path) -> Path:
    """``run``'s path below ``runs``, or a :class:`CarryError` naming the problem."""
    run = run.resolve()
    if not run.is_dir():
        raise CarryError(f"{run} is not a folder")
    try:
        return run.relative_to(runs.resolve())
    except ValueError:
        raise CarryError(f"{run} is not under {runs}: only runs below it are carried") from None


def save(run: Path, records_only: bool, force: bool, runs: Path, carried: Path) -> str:
    """``run``'s files into ``carried``; one line saying what was kept."""
    target = carried / relative(run, runs)
    weights = not records_only and (run / CHECKPOINT).is_file()
    have, kept = epochs(run), epochs(target)
    if weights and kept > have and not force:
        raise CarryError(f"{target} carries a checkpoint of {kept} epochs and {run} has "
                         f"{have}: saving would lose {kept - have} (--force to do it anyway)")
    files = carried_files(run, weights)
    if not files:
        raise CarryError(f"{run} holds nothing to carry (no {', '.join(RECORDS)} files)")
    for path in files:
        copy(path, target / path.name)
    jobs = copy_partials(run, target) if weights else 0  # of use only beside their weights
    what = f"checkpoint at epoch {have} and " if weights else ""
    partials = f" and {jobs} unfinished evaluations" if jobs else ""
    return (f"saved {what}{len(files) - (len(WEIGHTS) if weights else 0)} records{partials} "
            f"to {target}")


def restore_one(kept: Path, runs: Path, carried: Path) -> str | None:
    """One carried folder back into ``runs``; a line saying what happened, or None."""
    dest = runs / kept.relative_to(carried)
    dest_epochs, kept_epochs = epochs(dest) if dest.is_dir() else 0, epochs(kept)
    ahead = kept_epochs > dest_epochs  # 0 where the copy carries no checkpoint
    copied = [p for p in carried_files(kept, weights=True)
              if ahead or not (dest / p.name).exists()]
    for path in copied:
        copy(path, dest / path.name)
    # Only with the checkpoint they were made on: a run folder as far as its copy has made
    # its partial results itself since (or finished them, and removed them).
    jobs = copy_partials(kept, dest) if ahead else 0
    if not copied and not jobs:
        return None
    partials = f" with {jobs} unfinished evaluations" if jobs else ""
    if ahead:
        return f"restored {dest} at epoch {kept_epochs} (it had {dest_epochs}){partials}"
    return f"added {len(copied)} records{partials} to {dest}"


def restore_path(run: Path, runs: Path = RUNS, carried: Path = CARRIED) -> str | None:
    """Restore the one run folder ``run`` from its carried copy, if it has one and the copy
    is further along (what a benchmark script does before it trains, so that its same
    command resumes in a new session); a line saying so, or None."""
    try:
        kept = carried / run.resolve().relative_to(runs.resolve())
    except ValueError:  # a run outside benchmarks/runs (--out elsewhere) is not carried
        return None
    return restore_one(kept, runs, carried) if kept.is_dir() else None


def folders(carried: Path) -> list[Path]:
    """Every carried folder that holds files, once each."""
    if not carried.is_dir():
        return []
    return sorted({p.parent for p in carried.rglob("*") if p.is_file() and p.name[0] != "."
                   and not set(p.relative_to(carried).parts) & set(PARTIALS)})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("save", "restore", "list"))
    p.add_argument("runs", nargs="*", type=Path, help="run folders to save (save only)")
    p.add_argument("--records", action="store_true", help="save the records, not the weights")
    p.add_argument("--force", action="store_true",
                   help="save over a carried checkpoint of more epochs")
    p.add_argument("--runs-root", type=Path, default=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--carried-root", type=Path, default=CARRIED, help=argparse.SUPPRESS)
    args = p.parse_intermixed_args(argv)
    if (args.action == "save") != bool(args.runs):
        p.error("save takes the run folders to carry; restore and list take none")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.action == "save":
            lines = [save(run, args.records, args.force, args.runs_root, args.carried_root)
                     for run in args.runs]
        elif args.action == "restore":
            lines = [line for kept in folders(args.carried_root)
                     if (line := restore_one(kept, args.runs_root, args.carried_root))]
            lines = lines or ["nothing to restore: every run folder is as far as its carried copy"]
        else:
            lines = [f"{kept.relative_to(args.carried_root)}: "
                     f"{'epoch ' + str(epochs(kept)) if (kept / CHECKPOINT).is_file() else 'records'}"
                     for kept in folders(args.carried_root)]
    except CarryError as err:
        print(f"carry.py: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
