"""``pyro-vae evaluate`` and ``diagnose`` stopped and continued, on a tiny digits run: a
``kill -9`` in the middle of writing a chunk loses that chunk only, and the same command then
gives exactly the entry an uninterrupted run gives (IWAE, AIS and a diagnosis alike);
entries of different methods accumulate in evaluation.json; ``--resume`` with other settings
is refused in one line, exit 2, with the partial files untouched; bars stay out of logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.runs.folders import train_run

from support import run_cli, stable, stop_after

REPO = Path(__file__).resolve().parents[2]
IWAE = ["--samples", "48", "--points", "24", "--hold-points", "6", "--no-progress"]
AIS = ["--samples", "8", "--points", "6", "--method", "ais", "--steps", "6", "--chains", "2",
       "--leapfrog", "2", "--warmup-steps", "3", "--steps-grid", "2", "--ais-chunk", "2",
       "--no-progress"]
DIAGNOSE = ["--points", "2", "--chains", "2", "--warmup", "10", "--samples", "10",
            "--local-steps", "10", "--elbo-samples", "20", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(32,)), data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=2, batch_size=256, device="cpu"))
    return train_run(cfg, tmp_path_factory.mktemp("runs"), "tiny", progress=False).path


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run for each test."""
    return Path(shutil.copytree(trained, tmp_path / "tiny"))


def evaluation(run: Path) -> dict:
    return json.loads((run / "evaluation.json").read_text())


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


KILL_MID_WRITE = """
import os, signal, sys
import pyro_vae.partial as partial
from pyro_vae.files import temp_prefix
calls = []
def write_then_die(path, payload):
    calls.append(path)
    if len(calls) == 3:  # settings.json, the first chunk, then half of the second: kill -9
        (path.parent / (temp_prefix(path) + "x.tmp")).write_bytes(payload[:len(payload) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, payload)
original, partial.atomic_write = partial.atomic_write, write_then_die
from pyro_vae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_mid_chunk_loses_that_chunk_only_and_the_rerun_gives_the_same_entry(run, capsys):
    assert run_cli(["evaluate", str(run), *IWAE], capsys)[0] == 0
    whole = evaluation(run)
    key = whole["latest"]["iwae"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, "evaluate", str(run), *IWAE],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    kept = run / "evaluation.partial" / key
    assert sorted(p.name for p in kept.glob("*.npz")) == ["chunk-00000.npz"]
    assert len(list(kept.glob(".*.tmp"))) == 1  # the half-written chunk, never read
    code, err = run_cli(["evaluate", str(run), *IWAE], capsys)
    assert code == 0 and f"{key}: continuing from 1 finished chunk in" in err
    assert stable(evaluation(run)["entries"][key]) == stable(whole["entries"][key])
    assert not (run / "evaluation.partial").exists()  # removed once the entry is written


def test_an_interrupted_ais_resumes_to_the_same_entry(run, capsys, monkeypatch):
    assert run_cli(["evaluate", str(run), *AIS], capsys)[0] == 0
    whole = evaluation(run)
    key = whole["latest"]["ais"]
    with monkeypatch.context() as m:
        stop_after(m, 3)  # IWAE's one chunk, then two of AIS's three
        code, err = run_cli(["evaluate", str(run), *AIS], capsys)
    assert code == 130 and "interrupted" in err and len(err.strip().splitlines()) == 1
    assert len(list((run / "evaluation.partial" / key).glob("*.npz"))) == 2
    code, err = run_cli(["evaluate", str(run), *AIS, "--resume"], capsys)
    assert code == 0 and f"{key}: continuing from 2 finished chunks" in err
    after = evaluation(run)
    assert stable(after["entries"][key]) == stable(whole["entries"][key])
    assert stable(after["ais"]) == stable(whole["ais"])


def test_ais_then_bdmc_then_iwae_keeps_every_entry(run, capsys):
    assert run_cli(["evaluate", str(run), *AIS], capsys)[0] == 0
    ais = evaluation(run)["ais"]
    assert run_cli(["evaluate", str(run), *AIS[:4], "--bdmc", "2", *AIS[6:]], capsys)[0] == 0
    both = evaluation(run)
    assert stable(both["ais"]) == stable(ais) and both["bdmc"]["num_points"] == 2
    assert run_cli(["evaluate", str(run), "--samples", "16", "--points", "8", "--no-progress"],
                   capsys)[0] == 0
    out = evaluation(run)
    methods = sorted(entry["method"] for entry in out["entries"].values())
    assert methods == ["ais", "bdmc", "iwae", "iwae"]  # two IWAE settings, one entry each
    assert out["num_samples"] == 16 and out["key"] == out["latest"]["iwae"]  # the old top level
    assert stable(out["ais"]) == stable(ais) and out["bdmc"] == both["bdmc"]
    for key, entry in out["entries"].items():
        assert entry["key"] == key and key.startswith(entry["method"] + "-test-")


def test_each_command_names_the_entries_it_shows(run, capsys):
    code, err = run_cli(["evaluate", str(run), *AIS[:4], "--bdmc", "2", *AIS[6:]], capsys)
    out = evaluation(run)
    assert code == 0
    assert f"{out['latest']['iwae']}: 6 images, K = 8" in err and f"{out['latest']['bdmc']}:" in err
    assert out["latest"]["iwae"] == "iwae-test-N6-K8-seed0"


@pytest.mark.parametrize("changed, named", [(["--samples", "96"], "--samples 48 there, 96 now"),
                                            (["--hold-points", "8"], "--hold-points 6 there, 8 now"),
                                            (["--seed", "1"], "--seed 0 there, 1 now")])
def test_resume_with_other_settings_is_refused_in_one_line_and_keeps_the_files(
        run, capsys, monkeypatch, changed, named):
    with monkeypatch.context() as m:
        stop_after(m, 2)
        assert run_cli(["evaluate", str(run), *IWAE], capsys)[0] == 130
    before = snapshot(run / "evaluation.partial")
    args = [*IWAE, *changed]
    code, err = run_cli(["evaluate", str(run), *args, "--resume"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert lines[0].startswith("pyro-vae evaluate: error: --resume:")
    assert snapshot(run / "evaluation.partial") == before
    assert not (run / "evaluation.json").exists()


def test_resume_with_nothing_to_continue_is_refused(run, capsys):
    code, err = run_cli(["evaluate", str(run), *IWAE, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no partial results" in err


def test_bars_stay_out_of_redirected_logs_unless_asked(run, capsys):
    quiet = [a for a in IWAE if a != "--no-progress"]
    code, err = run_cli(["evaluate", str(run), *quiet], capsys)  # stderr is not a terminal
    assert code == 0 and "\r" not in err and "images [" not in err
    code, err = run_cli(["evaluate", str(run), *quiet, "--progress"], capsys)
    assert code == 0 and "/24 images [" in err and "left]" in err


def test_an_evaluation_json_of_the_older_format_becomes_entries(run, capsys):
    old = {"split": "test", "seed": 0, "num_samples": 5, "num_points": 3, "estimates": {},
           "psis": {}, "curve": {}, "ais": {"steps": 4, "chains": 2, "start": "guide",
                                            "leapfrog": 3, "target_accept": 0.65,
                                            "warmup_steps": 4, "num_points": 3,
                                            "curve": {"steps": [1, 4]}}}
    (run / "evaluation.json").write_text(json.dumps(old))
    assert run_cli(["evaluate", str(run), *IWAE], capsys)[0] == 0
    out = evaluation(run)
    assert "iwae-test-N3-K5-seed0" in out["entries"] and out["entries"]["iwae-test-N3-K5-seed0"]["migrated"]
    assert out["ais"]["key"] == "ais-test-N3-T4-C2-guide-L3-a0.65-w4-grid1,4-seed0"
    assert out["num_samples"] == 48  # the new entry is the latest


def test_an_interrupted_diagnose_resumes_to_the_same_summary(run, capsys, monkeypatch):
    assert run_cli(["diagnose", str(run), *DIAGNOSE], capsys)[0] == 0
    whole = json.loads((run / "diagnostics.json").read_text())
    with monkeypatch.context() as m:
        stop_after(m, 3)  # NUTS, the local fit and the gaps are kept
        assert run_cli(["diagnose", str(run), *DIAGNOSE], capsys)[0] == 130
    assert sorted(p.stem for p in (run / "diagnostics.partial").glob("*.npz")) == \
        ["gaps", "local_svi", "nuts"]
    code, err = run_cli(["diagnose", str(run), *DIAGNOSE, "--warmup", "11", "--resume"], capsys)
    assert code == 2 and "--warmup 10 there, 11 now" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(["diagnose", str(run), *DIAGNOSE, "--resume"], capsys)
    assert code == 0 and "continuing from 3 finished stages" in err
    again = json.loads((run / "diagnostics.json").read_text())
    assert stable(again) == stable(whole)
    assert not (run / "diagnostics.partial").exists()


def test_an_unreadable_evaluation_json_is_refused_before_any_work(run, capsys):
    (run / "evaluation.json").write_text("{not json")
    code, err = run_cli(["evaluate", str(run), *IWAE], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not JSON" in err
    assert not (run / "evaluation.partial").exists()
    assert (run / "evaluation.json").read_text() == "{not json"
