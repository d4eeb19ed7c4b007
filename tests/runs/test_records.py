"""What a run folder records about its checkpoints: best.safetensors, the checkpoint each
score was computed from, and the scores a resumed fit moves aside."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.runs import load_checkpoint, load_run

TINY = ["--epochs", "3", "--hidden", "16", "--batch-size", "256", "--no-progress", "--device", "cpu"]
DIAGNOSE = ["--points", "1", "--chains", "1", "--warmup", "5", "--samples", "5",
            "--local-steps", "5", "--elbo-samples", "5", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def test_best_checkpoint_holds_the_best_validation_epoch(run_dir, capsys):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_elbo"])
    ckpt = load_checkpoint(run_dir / "best.safetensors")
    assert ckpt.state.epoch == best["epoch"] and ckpt.optimizer is None
    assert ckpt.state.best_val == best["val_elbo"]
    loaded = load_run(run_dir, which="best")
    assert loaded.scored["checkpoint"] == "best" and loaded.scored["epoch"] == best["epoch"]
    assert loaded.scored["sha256"] == ckpt.digest
    assert main(["evaluate", str(run_dir), "--checkpoint", "best", "--samples", "4",
                 "--points", "3", "--no-progress"]) == 0
    scored = json.loads((run_dir / "evaluation.json").read_text())["scored"]
    assert scored == loaded.scored


def test_a_run_without_best_is_one_line(tmp_path, run_dir, capsys):
    with pytest.raises(FileNotFoundError, match="holds no best.safetensors"):
        load_run(_copy_without_best(run_dir, tmp_path), which="best")


def _copy_without_best(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "best.safetensors").unlink()
    return copy


def test_resume_moves_stale_scores_aside_and_says_how_many_epochs_ran(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY[:1], "2", *TINY[2:], "--out", str(out), "--name", "r"]) == 0
    run = out / "r"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--samples", "4", "--points", "3", "--no-progress"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["scored"]["epoch"] == 2
    assert main(["diagnose", str(run), *DIAGNOSE]) == 0
    assert json.loads((run / "diagnostics.json").read_text())["scored"]["epoch"] == 2
    assert "after epoch 2" in (run / "diagnostics.html").read_text()
    assert main(["sample", str(run), "--n", "4"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    moved = [line for line in err.splitlines() if line.startswith("moved the scores")]
    assert len(moved) == 1 and "stale/epoch-2" in moved[0]
    assert "2 epochs (3-4 of 4) in" in err
    for name in ("evaluation.json", "evaluation_khat.png", "diagnostics.json",
                 "diagnostics.html", "diagnostics.nc"):
        assert not (run / name).exists() and (run / "stale" / "epoch-2" / name).is_file(), name
    # sample records no epoch: the resumed checkpoint's is the newest it can be for
    assert (run / "stale" / "epoch-2-or-earlier" / "samples.png").is_file()
