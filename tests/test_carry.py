"""benchmarks/carry.py: a run folder saved, lost with the session, restored and resumed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pyro_vae.runs.folders import resume_run, train_run

from support import run_cli, stable, stop_after

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import carry  # noqa: E402  (a benchmarks/ script, imported by path as the other script tests do)


@pytest.fixture
def roots(tmp_path, tiny_config):
    runs, carried = tmp_path / "runs", tmp_path / "carried"
    train_run(tiny_config, runs / "reproduce", "tiny", progress=False)
    (runs / "peer").mkdir()
    (runs / "peer" / "seed-3.log").write_text("epoch 50 test accuracy 0.5\n")
    (runs / "peer" / "src").mkdir()  # a clone beside the logs: never carried
    (runs / "peer" / "src" / "big.py").write_text("print('not carried')\n")
    return runs, carried


def _carry(roots, *argv: str) -> int:
    runs, carried = roots
    return carry.main([*argv, "--runs-root", str(runs), "--carried-root", str(carried)])


def test_a_saved_run_comes_back_whole_and_resumes(roots, capsys):
    runs, carried = roots
    run = runs / "reproduce" / "tiny"
    assert _carry(roots, "save", str(run), str(runs / "peer")) == 0
    assert (carried / "reproduce" / "tiny" / "checkpoint.safetensors").is_file()
    assert not (carried / "peer" / "src").exists()
    before = {p.name: p.read_bytes() for p in carry.carried_files(run, weights=True)}
    for path in sorted(runs.rglob("*"), reverse=True):  # the session ends: runs/ is gone
        path.unlink() if path.is_file() else path.rmdir()
    assert _carry(roots, "restore") == 0
    assert {p.name: p.read_bytes() for p in carry.carried_files(run, weights=True)} == before
    assert (runs / "peer" / "seed-3.log").read_text() == "epoch 50 test accuracy 0.5\n"
    assert "restored" in capsys.readouterr().out
    assert resume_run(run, 3, progress=False).before == 2  # it went on from the carried epoch
    assert carry.epochs(run) == 3


def test_restore_leaves_a_run_that_is_further_along(roots, capsys):
    runs, carried = roots
    run = runs / "reproduce" / "tiny"
    assert _carry(roots, "save", str(run)) == 0
    resume_run(run, 3, progress=False)
    newer = (run / "checkpoint.safetensors").read_bytes()
    assert _carry(roots, "restore") == 0
    assert (run / "checkpoint.safetensors").read_bytes() == newer
    assert "nothing to restore" in capsys.readouterr().out


def test_saving_a_run_behind_its_carried_copy_is_refused(roots, tiny_config, capsys):
    runs, carried = roots
    run = runs / "reproduce" / "tiny"
    resume_run(run, 3, progress=False)
    assert _carry(roots, "save", str(run)) == 0
    kept = (carried / "reproduce" / "tiny" / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    for path in run.iterdir():  # the same row, restarted from 0 in a new session
        path.unlink()
    run.rmdir()
    train_run(tiny_config, runs / "reproduce", "tiny", progress=False)
    assert _carry(roots, "save", str(run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "carries a checkpoint of 3 epochs" in err[0] and "--force" in err[0]
    assert (carried / "reproduce" / "tiny" / "checkpoint.safetensors").read_bytes() == kept
    assert _carry(roots, "save", "--force", str(run)) == 0
    assert carry.epochs(carried / "reproduce" / "tiny") == 2


@pytest.mark.parametrize("argv, says", [
    (["save"], "save takes the run folders"),
    (["restore", "x"], "save takes the run folders"),
])
def test_misuse_is_one_line_and_exit_2(roots, argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        _carry(roots, *argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_a_folder_outside_the_runs_is_refused(roots, tmp_path, capsys):
    assert _carry(roots, "save", str(tmp_path)) == 2
    assert "is not under" in capsys.readouterr().err
    assert not roots[1].exists()


def test_restore_path_brings_back_one_run_and_ignores_others(roots, tmp_path):
    runs, carried = roots
    run = runs / "reproduce" / "tiny"
    assert _carry(roots, "save", str(run)) == 0
    for path in sorted(run.iterdir()):
        path.unlink()
    run.rmdir()
    assert carry.restore_path(tmp_path / "elsewhere", runs, carried) is None  # not under runs
    assert carry.restore_path(runs / "reproduce" / "other", runs, carried) is None  # not carried
    assert "restored" in carry.restore_path(run, runs, carried)
    assert carry.epochs(run) == 2
    assert carry.restore_path(run, runs, carried) is None  # already as far as its copy


IWAE = ["--samples", "48", "--points", "24", "--hold-points", "6", "--no-progress"]


def _iwae_entry(run: Path) -> dict:
    doc = json.loads((run / "evaluation.json").read_text())
    return stable(doc["entries"][doc["latest"]["iwae"]])


def test_an_unfinished_evaluation_travels_and_resumes_to_the_same_entry(
        roots, capsys, monkeypatch, tmp_path):
    runs, carried = roots
    run = runs / "reproduce" / "tiny"
    whole = Path(shutil.copytree(run, tmp_path / "whole"))
    assert run_cli(["evaluate", str(whole), *IWAE], capsys)[0] == 0
    with monkeypatch.context() as m:
        stop_after(m, 1)  # Ctrl-C once the first chunk is on disk
        assert run_cli(["evaluate", str(run), *IWAE], capsys)[0] == 130
    assert _carry(roots, "save", str(run)) == 0
    assert "1 unfinished evaluations" in capsys.readouterr().out
    assert len(list((carried / "reproduce" / "tiny").rglob("*.npz"))) == 1
    assert carry.folders(carried) == [carried / "reproduce" / "tiny"]  # not a run of its own
    shutil.rmtree(runs)  # the session ends
    assert _carry(roots, "restore") == 0
    assert "with 1 unfinished evaluations" in capsys.readouterr().out
    code, err = run_cli(["evaluate", str(run), *IWAE], capsys)
    assert code == 0 and "continuing from 1 finished chunk" in err
    assert _iwae_entry(run) == _iwae_entry(whole)
    assert _carry(roots, "save", str(run)) == 0  # finished: the carried chunks go too
    assert not list((carried / "reproduce" / "tiny").rglob("*.npz"))
