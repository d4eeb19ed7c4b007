"""Helpers that tests in several folders share (``tests/`` is on ``sys.path`` through its
``conftest.py``)."""

from __future__ import annotations

from pathlib import Path

from pyro_vae.cli import main


def run_cli(argv: list[str], capsys=None) -> tuple[int, str]:
    """The CLI in this process: its exit status and what it wrote to stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err if capsys else ""


class Evil:
    """Unpickling this creates a marker file: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
