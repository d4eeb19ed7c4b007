"""``pyro-vae evaluate RUN`` on a tiny fitted digits run: JSON, figures, user errors."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.runs import train_run


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

