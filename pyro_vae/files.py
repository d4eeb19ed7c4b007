"""Files written so that a crash or a full disk never leaves half of one: atomic writes,
appended lines, and the sweep of temporary files a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from pyro_vae.faults import point


class DiskFullError(OSError):
    """No space was left on the device for a file pyro-vae writes; the file is as it was."""

    def __init__(self, path: Path, needed: int, err: OSError) -> None:
        self.path, self.needed = Path(path), needed
        try:
            free = f"{shutil.disk_usage(self.path.parent).free:,} bytes are free there"
        except OSError:
            free = "the free space could not be read"
        super().__init__(err.errno, f"no space left on the device for {self.path}: writing it "
                                    f"needs {needed:,} bytes, {free}")

    def __str__(self) -> str:
        return str(self.strerror)


_FULL = (errno.ENOSPC, errno.EDQUOT)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}-"


def atomic_write(path: Path, payload: bytes) -> None:
    """Replace ``path`` by ``payload`` so that a crash leaves either the old or the new file.

    Raises:
        DiskFullError: the device is full; ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():  # else the rename fails naming the temporary file, not this one
        raise IsADirectoryError(errno.EISDIR, "it is a folder, and a file was to be written there",
                                str(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_of(path))  # mkstemp makes 0600; keep the file readable as before
        with os.fdopen(fd, "wb") as f:
            # In two halves, so that a crash test can tear the file (pyro_vae/faults.py).
            view, half = memoryview(payload), len(payload) // 2
            f.write(view[:half])
            f.flush()
            point(f"{path.name}/partial")
            f.write(view[half:])
            f.flush()
            os.fsync(f.fileno())
        point(f"{path.name}/synced")
        os.replace(tmp, path)
        point(f"{path.name}/renamed")
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _FULL:
            raise DiskFullError(path, len(payload), err) from None
        raise
    sweep_temporary(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_of(path: Path) -> int:
    """The permissions ``path`` has, or those a new file gets under the process's umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        pass
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        umask = int(status["Umask"].strip(), 8)
    except (OSError, KeyError, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_temporary(path: Path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` on this host left when they died
    mid-write; a live writer's file, and any other host's, is left alone. Returns the removed."""
    removed = []
    for stale in Path(path).parent.glob(f".{Path(path).name}.{_HOST}-*-*.tmp"):
        pid = stale.name[len(f".{Path(path).name}.{_HOST}-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def appended(path: Path, text: str) -> Iterator[None]:
    """Append ``text`` to ``path`` for good only if the ``with`` block succeeds: on any
    failure (e.g. the checkpoint the line describes could not be written) the file is cut
    back to its former length, which needs no space.

    Raises:
        DiskFullError: the device is full (the file is as it was).
    """
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            half = len(text) // 2  # a torn last line, as a crash leaves it (pyro_vae/faults.py)
            f.write(text[:half])
            f.flush()
            point(f"{path.name}/partial-line")
            f.write(text[half:])
            f.flush()
        point(f"{path.name}/line")
        yield
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.truncate(path, size)
        if isinstance(err, OSError) and err.errno in _FULL and not isinstance(err, DiskFullError):
            raise DiskFullError(path, len(text.encode()), err) from None
        raise
