"""``pyro-vae diagnose`` end to end on a tiny fitted run, and the example script."""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import pytest

from pyro_vae.cli import main
from pyro_vae.runs.folders import train_run

REPO = Path(__file__).resolve().parents[2]

TINY = ["--points", "2", "--chains", "2", "--warmup", "15", "--samples", "15", "--local-steps", "20",
        "--elbo-samples", "50", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(32,)), data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=2, batch_size=256, device="cpu"))
    return train_run(cfg, tmp_path_factory.mktemp("runs"), "tiny", progress=False).path


def test_diagnose_writes_json_netcdf_figures_and_page(tiny_run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", str(tiny_run), *TINY, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "diagnostics.html")
    assert "active units" in captured.err
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary["config"]["points"] == 2 and summary["collapse"]["latent_dim"] == 2
    assert summary["collapse"]["sites"]["z"]["dim"] == 2 and summary["image_site"] == "x"
    assert {"approximation_gap", "amortization_gap", "log_px"} <= set(summary["gaps"])
    assert len(summary["verdicts"]) >= 6
    posterior = az.from_netcdf(out / "diagnostics.nc").posterior
    assert posterior.z.shape == (2, 15, 2, 2) and posterior.z.dims[-1] == "z_dim"
    assert (out / "diagnose_pairs.png").exists() and (out / "diagnose_pixel_maps.png").exists()


def test_missing_run_is_a_one_line_user_error(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae diagnose: error:") and "\n" not in err


def test_non_positive_settings_are_refused(tiny_run):
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", str(tiny_run), "--chains", "0"])
    assert exit_info.value.code == 2
