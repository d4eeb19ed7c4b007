"""``pyro-vae evaluate RUN`` on a tiny fitted digits run: JSON, figures, user errors."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.runs.folders import train_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(32,)), data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=2, batch_size=256, device="cpu"))
    return train_run(cfg, tmp_path_factory.mktemp("runs"), "tiny", progress=False).path


def test_evaluate_writes_json_and_figures(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "--samples", "64", "--points", "40", "--no-progress"]) == 0
    out = json.loads((tiny_run / "evaluation.json").read_text())
    assert out["num_points"] == 40 and out["num_samples"] == 64 and out["split"] == "test"
    est = out["estimates"]
    # Per point IWAE ≥ ELBO holds for any draws (Jensen), hence also for the means.
    assert est["iwae"]["mean"] >= est["elbo"]["mean"]
    for e in est.values():  # bits/dim is −log p / (D ln 2) with D = 64 pixels
        assert e["bits_per_dim"] == pytest.approx(-e["mean"] / (64 * 0.6931471805599453))
    assert 0.0 <= out["psis"]["fraction_khat_above"] <= 1.0
    assert out["curve"]["ks"][-1] == 64 and len(out["curve"]["mean"]["iwae"]) == len(out["curve"]["ks"])
    for name in ("evaluation_k_curve.png", "evaluation_khat.png"):
        assert (tiny_run / name).stat().st_size > 1000
    assert "bits/dim" in capsys.readouterr().err


def test_evaluate_refuses_more_points_than_the_split(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "--points", "100000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--points" in err and "Traceback" not in err


def test_evaluate_missing_run_is_a_user_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err



def test_evaluate_ais_and_bdmc_write_their_blocks_and_the_curve(tiny_run, capsys):
    args = ["evaluate", str(tiny_run), "--samples", "16", "--points", "6", "--no-progress",
            "--method", "ais", "--steps", "8", "--chains", "3", "--leapfrog", "2",
            "--warmup-steps", "4", "--steps-grid", "2", "--bdmc", "3"]
    assert main(args) == 0
    out = json.loads((tiny_run / "evaluation.json").read_text())
    ais, bdmc = out["ais"], out["bdmc"]
    assert ais["steps"] == 8 and ais["chains"] == 3 and ais["start"] == "guide"
    assert ais["curve"]["steps"] == [2, 8] and ais["estimate"]["mean"] == ais["curve"]["mean"][-1]
    assert ais["estimate"]["bits_per_dim"] == pytest.approx(-ais["estimate"]["mean"] / (64 * 0.6931471805599453))
    assert 0.0 <= ais["acceptance_mean"] <= 1.0 and ais["num_points"] == 6
    assert bdmc["num_points"] == 3 and [r["steps"] for r in bdmc["per_steps"]] == [2, 8]
    for row in bdmc["per_steps"]:
        assert row["gap_mean"] == pytest.approx(row["upper"]["mean"] - row["lower"]["mean"])
    err = capsys.readouterr().err
    assert "ais T=8" in err and "bdmc T=2" in err
    assert (tiny_run / "evaluation_k_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("flag", ["--steps", "--chains"])
def test_evaluate_refuses_zero_steps_or_chains(tiny_run, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tiny_run), "--method", "ais", flag, "0", "--no-progress"])
    assert exit_.value.code == 2
    assert f"{flag}: must be a positive integer, got 0" in capsys.readouterr().err


def test_evaluate_refuses_bad_ais_settings_before_anything_runs(tiny_run, capsys):
    before = (tiny_run / "evaluation.json").read_text() if (tiny_run / "evaluation.json").exists() else None
    assert main(["evaluate", str(tiny_run), "--method", "ais", "--target-accept", "1.5",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target_accept" in err[0]
    after = (tiny_run / "evaluation.json").read_text() if (tiny_run / "evaluation.json").exists() else None
    assert before == after  # nothing written
