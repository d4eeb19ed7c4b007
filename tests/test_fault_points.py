"""The crash test's hook (pyro_vae/faults.py): inert unless armed, and when armed it kills at
the named point's COUNT-th pass, on the named rank only; a malformed value is refused."""

from __future__ import annotations

import signal

import pytest

from pyro_vae import faults
from pyro_vae.files import atomic_write


@pytest.fixture
def kills(monkeypatch) -> list[str]:
    """Where the hook would have sent SIGKILL (recorded instead)."""
    seen: list[str] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: seen.append(sig))
    faults.reset()
    monkeypatch.delenv(faults.LOG, raising=False)
    return seen


def test_unset_does_nothing(kills, monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV, raising=False)
    atomic_write(tmp_path / "a.json", b"{}")
    faults.point("fit/step")
    assert kills == []


def test_the_count_th_pass_of_a_matching_point_kills(kills, monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV, "*.npz/synced:2")
    monkeypatch.setenv(faults.LOG, str(tmp_path / "log"))
    for name in ("a.npz", "b.json", "c.npz", "d.npz"):
        atomic_write(tmp_path / name, b"x")
        if name == "c.npz":
            assert kills == [signal.SIGKILL]  # at c.npz's rename, not before
    assert kills == [signal.SIGKILL]  # once: the count is passed
    logged = (tmp_path / "log").read_text().splitlines()
    assert logged[:3] == ["a.npz/partial", "a.npz/synced", "a.npz/renamed"] and len(logged) == 12


def test_a_rank_filter(kills, monkeypatch):
    monkeypatch.setenv(faults.ENV, "fit/step:1@1")
    monkeypatch.setenv("RANK", "0")
    faults.point("fit/step")
    assert kills == []
    monkeypatch.setenv("RANK", "1")
    faults.point("fit/step")
    assert kills == [signal.SIGKILL]


@pytest.mark.parametrize("spec", ["fit/step", "fit/step:0", ":3", "fit/step:x", "a:1@b"])
def test_malformed_values_are_refused(kills, monkeypatch, spec):
    monkeypatch.setenv(faults.ENV, spec)
    with pytest.raises(ValueError, match=faults.ENV):
        faults.point("fit/step")
