"""Which story files this user trusts to import: the per-user trust file.

A run folder of a story file carries its code (``story.py``, ``guide.py``), and rebuilding
the run imports it. The SHA-256 in ``config.json`` only proves that the copy and the config
agree; whoever sent the folder could have edited both. So a story file is imported from a
run folder only when its digest is in this user's trust file:

- ``pyro-vae train`` records the digests of the copies it writes (the user ran that code), and
- ``--trust-story`` (``trust_story=True`` in Python) trusts a folder from elsewhere once and
  records it, in the spirit of Hugging Face's ``trust_remote_code``.

The file is ``$PYRO_VAE_TRUST_FILE``, else ``$XDG_CONFIG_HOME/pyro-vae/trusted.json``, else
``~/.config/pyro-vae/trusted.json``: ``{"version": 1, "stories": {sha256: {"file", "by",
"at"}}}``. It is rewritten atomically under an ``fcntl`` lock, in a folder made ``0700``.
Built-in and shipped stories never need it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from pyro_vae.files import atomic_write

TRUST_ENV = "PYRO_VAE_TRUST_FILE"
TRUST_FLAG = "--trust-story"
VERSION = 1


class UntrustedStoryError(ValueError):
    """A story or guide file in a run folder that this user has not trusted; nothing in it ran."""


def trust_file() -> Path:
    """Where this user's trusted digests are kept (see the module docstring)."""
    if os.environ.get(TRUST_ENV):
        return Path(os.environ[TRUST_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "pyro-vae" / "trusted.json"


def trusted_digests(path: Path | None = None) -> dict[str, dict]:
    """``{sha256: record}`` of the trust file (empty when there is none).

    Raises:
        ValueError: the file exists but is not a trust file (one line naming it).
    """
    path = trust_file() if path is None else Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        stories = json.loads(text)["stories"]
        if not isinstance(stories, dict):
            raise TypeError("'stories' is not an object")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a pyro-vae trust file ({type(err).__name__}: {err}); fix "
                         f"or delete it (${TRUST_ENV} chooses another)") from None
    return stories


def is_trusted(digest: str) -> bool:
    return digest in trusted_digests()


def record_trust(digest: str, file: Path, by: str) -> None:
    """Add ``digest`` (of ``file``) to the trust file; ``by`` says who trusted it (``train``,
    ``--trust-story``). A digest already there keeps its first record."""
    path = trust_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path):
        stories = trusted_digests(path)
        if digest in stories:
            return
        stories[digest] = {"file": str(Path(file).resolve()), "by": by,
                           "at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        payload = json.dumps({"version": VERSION, "stories": stories}, indent=2) + "\n"
        atomic_write(path, payload.encode())


def record_written(files: dict[Path, str]) -> None:
    """After ``train`` copied story files into a run folder: trust their digests. A trust file
    that cannot be written costs only a warning (``--trust-story`` then opens the folder)."""
    try:
        for file, digest in files.items():
            record_trust(digest, file, "train")
    except (OSError, ValueError) as err:
        print(f"warning: the story's SHA-256 could not be recorded in {trust_file()} ({err}); "
              f"evaluate, diagnose, sample and --resume will ask for {TRUST_FLAG}", file=sys.stderr)


def check_trusted(file: Path, digest: str, trust: bool) -> None:
    """Refuse ``file`` (digest ``digest``) unless this user trusts it; with ``trust``, trust it
    now and record that (a trust file that cannot be written costs a warning).

    Raises:
        UntrustedStoryError: one line naming the file and the flag.
    """
    if trust:
        try:
            record_trust(digest, file, TRUST_FLAG)
        except (OSError, ValueError) as err:
            print(f"warning: {file} trusted for this call only: {err}", file=sys.stderr)
        return
    if not is_trusted(digest):
        raise UntrustedStoryError(
            f"{file} was not written by pyro-vae train for this user (its SHA-256 is not in "
            f"{trust_file()}), and rebuilding the run would run its code; read it, and if you "
            f"trust it pass {TRUST_FLAG} (trust_story=True in Python) once")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``'s sibling lock file for a read-modify-write."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
