"""Stopping a fit by signal: SIGINT (Ctrl-C) and SIGTERM set a flag that the fit polls at
every step boundary (``train_run(..., stop=flag)``), so it ends there with its checkpoint
written, and the same command resumes it. Used by ``pyro-vae train`` and by the benchmark
scripts that run fits for hours."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class StopFlag:
    """Set by SIGINT/SIGTERM; the fit polls it at every step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handle(self, signum: int, frame) -> None:
        self.signal = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Inside, SIGINT and SIGTERM set the flag it yields (even where a background job was
    started with them ignored) in place of stopping the process; after, they do what they
    did before."""
    flag = StopFlag()
    previous = {s: signal.signal(s, flag.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
