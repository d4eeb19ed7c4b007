"""Running one generated input through the command line and judging what it did.

An input (a :class:`Case`: an argv and the files it reaches) passes when the command ends
within its time bound with exit status 0, or with 2, 3 or 4 (bad input, a diverged fit, a
full disk: the README's statuses) and one line saying why (``pyro-vae CMD: error: ...``,
the last line of stderr, or before argparse's pointer to ``--help``), never a traceback;
and when it changed no file it should not touch: after a refusal, nothing in the run folder
or the data file; after a success, none of the run's own files (config, metrics,
checkpoints, story copies) unless the command is ``train`` (the run's writer).

The CLI runs in this process (``pyro_vae.cli.main``), stderr and stdout captured, the bound
kept by ``SIGALRM``; :func:`run_in_subprocess` runs the real entry point for a few cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STATUSES = {0: "ok", 2: "refused", 3: "diverged", 4: "disk-full"}
"""Exit statuses a generated input may end with, and what each is counted as."""
FAILURES = ("traceback", "exit-status", "no-error-line", "error-not-last", "several-error-lines",
            "hang", "changed-file")
PROTECTED = ("config.json", "metrics.jsonl", "checkpoint.safetensors", "best.safetensors",
             "story.py", "guide.py")
"""A run's own files: only ``train`` (its writer) may change them."""
RAW_WARNING = re.compile(r"\.py:\d+: \w*Warning")


class Hang(BaseException):
    """Raised by the alarm inside a command that outlived its bound (a BaseException, so
    that no ``except Exception`` in the engine swallows it)."""


@dataclass
class Case:
    """One generated input: the argv, the folders and files it may change or must not,
    what it is (for the report), and how long it may take."""

    argv: list[str]
    watched: list[Path] = field(default_factory=list)
    """Run folders and data files whose files are hashed before and after."""
    what: str = ""
    limit: float = 120.0


@dataclass
class Outcome:
    """What a case did: its kind (a :data:`STATUSES` value or a :data:`FAILURES` one)."""

    kind: str
    code: int | None
    seconds: float
    detail: str
    case: Case
    raw_warnings: int = 0

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES

    def describe(self) -> str:
        return (f"{self.kind} (exit {self.code}, {self.seconds:.1f} s) on {self.case.what}\n"
                f"argv: {self.case.argv}\n{self.detail}")


UNWATCHED = (".writer.lock",)
"""Written by every ``train`` on its run folder, refused or not: the holder of the lock."""


def digest(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (folders walked), by path."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and p.name not in UNWATCHED)
        for p in files:
            with contextlib.suppress(OSError):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _alarm(signum, frame):
    raise Hang()


def call_main(argv: list[str], limit: float) -> tuple[int | str | None, str, str]:
    """(exit status, or "hang" or the traceback text; stdout; stderr) of ``main(argv)``."""
    from pyro_vae.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | str | None = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) or exit_.code is None else 1
    except Hang:
        code = "hang"
    except BaseException:  # what reaches a user as a traceback
        code = "traceback:" + traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue()


def judge(command: str, code: int | str | None, err: str) -> tuple[str, str]:
    """The kind of an ending and the line that shows it."""
    if code == "hang":
        return "hang", "outlived its time bound"
    if isinstance(code, str):
        return "traceback", code.strip().splitlines()[-1] + "\n" + code[-3000:]
    code = 0 if code is None else code
    if "Traceback (most recent call last)" in err:
        return "traceback", err[-3000:]
    if code not in STATUSES:
        return "exit-status", f"exit {code}: {err.strip()[-500:]}"
    if code == 0:
        return "ok", ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    prefix = f"pyro-vae {command}: error: "
    errors = [line for line in lines if line.startswith(prefix) or ": error: " in line]
    if not errors:
        return "no-error-line", err.strip()[-500:]
    if len(errors) > 1:
        return "several-error-lines", "\n".join(errors)
    tail = lines[-2:] if lines[-1] == f"see pyro-vae {command} --help" else lines[-1:]
    if not tail[0].startswith(prefix) or len(tail[0]) <= len(prefix):
        return "error-not-last", "\n".join(lines[-3:])
    return STATUSES[code], tail[0]


def may_change(command: str, path: str) -> bool:
    """Whether a successful ``command`` may change the file ``path`` of a watched folder."""
    return command == "train" or Path(path).name not in PROTECTED


def run_case(case: Case) -> Outcome:
    """Run ``case`` in this process and judge it."""
    command = next((a for a in case.argv if not a.startswith("-")), "")
    before = digest(case.watched)
    start = time.perf_counter()
    code, _, err = call_main(case.argv, case.limit)
    seconds = time.perf_counter() - start
    kind, detail = judge(command, code, err)
    if kind in STATUSES.values() and kind != "diverged":
        changed = changed_files(before, digest(case.watched))
        bad = [p for p in changed if kind != "ok" or not may_change(command, p)]
        if bad:
            kind, detail = "changed-file", f"{kind} but changed {bad}: {detail}"
    return Outcome(kind, code if isinstance(code, int) else None, seconds, detail, case,
                   len(RAW_WARNING.findall(err)))


def run_in_subprocess(case: Case, cwd: Path) -> Outcome:
    """Run ``case`` through ``python -m pyro_vae`` (the real entry point) and judge it."""
    command = next((a for a in case.argv if not a.startswith("-")), "")
    before = digest(case.watched)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pyro_vae", *case.argv], cwd=cwd,
                              capture_output=True, text=True, timeout=case.limit,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = "hang", ""
    kind, detail = judge(command, code, err)
    if kind in STATUSES.values() and kind != "diverged":
        bad = [p for p in changed_files(before, digest(case.watched))
               if kind != "ok" or not may_change(command, p)]
        if bad:
            kind, detail = "changed-file", f"changed {bad}"
    return Outcome(kind, code if isinstance(code, int) else None, time.perf_counter() - start,
                   detail, case)


# ---------------------------------------------------------------------------- the workspace


def binary_images(n: int = 96, side: int = 8, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, side, side)) > 0.6).astype(np.float32)


class Workspace:
    """A folder with what the inputs start from: a small image file, a run of the built-in
    VAE and one of a shipped story trained on it, and scratch folders, one per case (made
    the current directory while it runs, so that relative outputs land there)."""

    def __init__(self, root: Path) -> None:
        from pyro_vae.cli import main

        self.root = Path(root)
        self.data = self.root / "images.npz"
        np.savez(self.data, x=binary_images(), y=np.arange(96) % 4)
        self.runs = self.root / "runs"
        base = ["train", "--epochs", "2", "--hidden", "8", "--latent-dim", "2", "--batch-size",
                "32", "--device", "cpu", "--no-progress", "--data", str(self.data), "--out",
                str(self.runs)]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([*base, "--name", "vae"]) == 0
            assert main([*base, "--name", "ink", "--model",
                         f"{REPO}/examples/stories/ink.py:InkStory", "--model-arg",
                         "latent_dim=2", "--model-arg", "hidden=8"]) == 0
        self.count = 0

    def run_copy(self, name: str = "vae") -> Path:
        """A fresh copy of a trained run in the current scratch folder."""
        return Path(shutil.copytree(self.runs / name, Path.cwd() / f"run-{name}"))

    @contextlib.contextmanager
    def scratch(self):
        """An empty folder, the current directory inside; removed after."""
        self.count += 1
        folder = self.root / f"case-{self.count}"
        folder.mkdir()
        here = Path.cwd()
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(here)
            shutil.rmtree(folder, ignore_errors=True)
