"""One writer per run folder: an advisory ``fcntl.flock`` on ``<run>/.writer.lock``.

``train`` and ``train --resume`` hold the lock for as long as they write the folder
(rank 0 alone under ``torchrun``); a second writer is refused at once, in one line that
names the holder. The operating system releases a ``flock`` when its holder's file is
closed, so a writer that dies (``kill -9``, a crash, a lost node) never leaves a stale
lock behind. Readers (``evaluate``, ``diagnose``, ``sample``) take no lock: checkpoints
are replaced atomically, so a reader sees the previous file or the next, never half of one.

The lock file holds the holder's pid, host and start time as JSON, for that message only;
the ``flock`` itself is the lock, whatever the file says.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".writer.lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder's lock (as the holder wrote it)."""

    pid: int
    host: str
    since: float
    """Seconds since the epoch (``time.time()``) when the lock was taken."""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host}, since {when}"


def _read_holder(fd: int) -> Holder | None:
    """The holder's record, or ``None`` while the holder has not written it yet."""
    try:
        raw = os.pread(fd, 4096, 0)
        fields = json.loads(raw.decode())
        return Holder(int(fields["pid"]), str(fields["host"]), float(fields["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunLock:
    """The exclusive writer lock of ``folder``; :meth:`acquire` refuses at once if taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunLockedError` naming the holder; never waits."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = holder.describe() if holder else "a process that is just starting"
            raise RunLockedError(f"{self.folder} is being written by another pyro-vae train "
                                 f"({who}); wait for it to finish, or stop it, or choose "
                                 f"another --name") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the file releases the ``flock``); the file stays, so
        that two writers never lock two different files of the same name."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


@contextlib.contextmanager
def writer_lock(folder: Path, take: bool = True) -> Iterator[RunLock | None]:
    """Hold ``folder``'s writer lock for the ``with`` block (``take=False``: hold nothing,
    for the ranks of a data-parallel fit other than 0, which never write)."""
    if not take:
        yield None
        return
    lock = RunLock(folder).acquire()
    try:
        yield lock
    finally:
        lock.release()
