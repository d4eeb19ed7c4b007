"""benchmarks/bench_train.py runs end to end on the offline digits (tiny settings), and its
NumPyro peer, where jax and numpyro are installed, answers the interleaved repeats."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_train():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_train", BENCH / "bench_train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _run(capsys, *extra: str) -> str:
    bench = _bench_train()
    bench.main(bench.parse_args(["--data", "digits", "--skip", "epochs", "memory", "--batch-sizes",
                                 "32", "--steps", "2", "--repeats", "1", "--no-pin", *extra]))
    return capsys.readouterr().out


def test_every_requested_row_is_timed_and_compared(capsys):
    out = _run(capsys, "--no-numpyro", "--paths", "--precisions", "fp32-medium")
    for row in ("floor ", "fit:elbo-jit ", "fit:elbo-jit+fp32-medium", "fit:iwae",
                "fit:elbo-jit+full-rank", "fit:elbo-jit+iaf", "fit:elbo-jit+gaussian"):
        assert f"  {row}" in out, row
    assert "numpyro " not in out


def test_the_numpyro_peer_is_a_row_when_installed(capsys):
    pytest.importorskip("jax")
    pytest.importorskip("numpyro")
    out = _run(capsys)
    assert "  numpyro " in out and "÷ numpyro" in out
    assert "× NumPyro's images/s" in out


def test_whole_fits_are_timed_with_the_default(capsys):
    """``--long``: whole fits of the floor, ``elbo-jit`` and the default, each against the floor
    (a 2-epoch digits fit is far too short for the default to compile: it is elbo-jit's)."""
    out = _run(capsys, "--no-numpyro", "--skip", "steps", "epochs", "memory", "--long", "2",
               "--long-repeats", "1")
    assert "whole 2-epoch fits" in out
    for row in ("floor", "fit:elbo-jit", "fit:elbo-auto"):
        assert f"  {row} " in out and f"repeat 0: {row} " in out, row
