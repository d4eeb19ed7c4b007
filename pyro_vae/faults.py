"""A test hook: named points in the code where a crash test can kill this process.

Writing a file, appending a metrics line, filling a new run folder and each training step
call :func:`point` with a name (``checkpoint.safetensors/synced``, ``metrics.jsonl/line``,
``folder/config``, ``fit/step``: the names are listed in docs/faults.md). With the
environment variable unset, as in any real use, :func:`point` is one dictionary lookup and
does nothing. With

.. code-block:: text

    PYRO_VAE_FAULT_POINT=PATTERN:COUNT[@RANK]

the process sends itself SIGKILL the ``COUNT``-th time (from 1) it reaches a point whose
name matches ``PATTERN`` (``fnmatch``: ``*.npz/synced`` is any partial result's file just
before its rename), and only on that ``torchrun`` rank when ``@RANK`` is given. With
``PYRO_VAE_FAULT_LOG=FILE`` every point reached is appended to ``FILE`` as a line (how a
crash test learns how often an uninterrupted run passes each point).
``benchmarks/crash_soak.py`` uses both to kill a fit inside the steps a crash could split.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "PYRO_VAE_FAULT_POINT"
LOG = "PYRO_VAE_FAULT_LOG"

# How often each pattern has been reached in this process (the hook's one piece of state:
# a test hook counts; nothing is kept while the variable is unset).
_reached: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int, int | None]:
    """``PATTERN:COUNT[@RANK]`` → ``(pattern, count, rank or None)``; a malformed value is
    refused, so that a crash test never runs believing it armed a point it did not."""
    pattern, _, rest = spec.rpartition(":")
    count, _, rank = rest.partition("@")
    try:
        parsed = int(count), (int(rank) if rank else None)
    except ValueError:
        parsed = (0, None)
    if not pattern or parsed[0] < 1:
        raise ValueError(f"{ENV}={spec!r}: expected PATTERN:COUNT or PATTERN:COUNT@RANK, COUNT >= 1")
    return pattern, parsed[0], parsed[1]


def reset() -> None:
    """Forget how often each point was reached (as a fresh process would)."""
    _reached.clear()


def point(name: str) -> None:
    """Kill this process here if :data:`ENV` names this point and its count is reached."""
    log = os.environ.get(LOG)
    if log:
        with open(log, "a") as f:
            f.write(name + "\n")
    spec = os.environ.get(ENV)
    if not spec:
        return
    pattern, count, rank = parse(spec)
    if not fnmatch.fnmatchcase(name, pattern):
        return
    if rank is not None and os.environ.get("RANK", "0") != str(rank):
        return
    _reached[spec] = _reached.get(spec, 0) + 1
    if _reached[spec] == count:
        os.kill(os.getpid(), signal.SIGKILL)
