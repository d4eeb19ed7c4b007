"""``train --log tensorboard|mlflow|csv``: what the trackers hold, read back with their own
readers, is metrics.jsonl's numbers at the epochs' steps, each step once, across a resume.

One run serves every test: trained for 2 epochs with TensorBoard and MLflow, then resumed to
4 with CSV added. Between the two, tracking.json is set back to say that TensorBoard holds
only epoch 1, as a fit killed after TensorBoard wrote epoch 2 but before tracking.json said so
would leave it: the resume must purge TensorBoard's epoch 2 and write it again, once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.runs import CONFIG, METRICS, TRACKING, read_tracking

from support import run_cli, train_tiny

EPOCHS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """The run folder, and its tracking.json after the first 2 epochs."""
    # The tests read back with the trackers' own readers (the test extra installs them).
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("tracked")
    run = train_tiny(out, "run", "--log", "tensorboard", "--log", "mlflow")
    first = read_tracking(run)
    assert first["tensorboard"]["epoch"] == 2
    (run / TRACKING).write_text(json.dumps({**first, "tensorboard": {"epoch": 1}}))
    code = main(["train", "--resume", str(run), "--epochs", "4", "--no-progress", "--log", "csv"])
    assert code == 0
    return run, first


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Each number of metrics.jsonl as (epoch, value) pairs, by its key."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in _lines(run):
        for key, value in line.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((line["epoch"], value))
    return out


def _mlflow(run: Path, monkeypatch):
    """An MLflow client of the run's file store, and the run's MLflow run id."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
    entry = read_tracking(run)["mlflow"]
    return MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri()), entry["run_id"]


def test_tensorboard_holds_each_epoch_once_as_metrics_jsonl_has_it(tracked):
    from tensorboard.backend.event_processing import event_accumulator

    run, _ = tracked
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"),
                                             size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    expected = _scalars(run)
    assert set(expected) >= {"train_elbo", "val_elbo", "images_per_second", "lr", "beta"}
    assert set(acc.Tags()["scalars"]) == set(expected)
    for key, rows in expected.items():
        events = acc.Scalars(key)
        # the purged epoch 2 once, not twice (a latent site's figures: on the epochs that have them)
        assert [e.step for e in events] == [epoch for epoch, _ in rows], key
        # TensorBoard keeps a scalar as float32: exactly the float32 nearest the value.
        assert [e.value for e in events] == [float(np.float32(v)) for _, v in rows], key
    assert [epoch for epoch, _ in expected["train_elbo"]] == EPOCHS
    figures = sorted(p.stem for p in run.glob("*.png"))
    assert sorted(t.split("/", 1)[1] for t in acc.Tags()["images"]) == figures
    # The figures of the first fit's end went with the purged step 2; the resume's are at 4.
    assert all([e.step for e in acc.Images(f"figures/{f}")] == [4] for f in figures)


def test_tensorboard_hyperparameters_are_the_config(tracked):
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, _ = tracked
    acc = plugin_event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = json.loads((run / CONFIG).read_text())
    assert hparams["train.lr"].number_value == config["train"]["lr"]
    assert hparams["data.name"].string_value == "digits"
    assert hparams["model.hidden_sizes"].string_value == "[16]"
    assert hparams["train.epochs"].number_value == 2  # as the run started


def test_mlflow_continues_one_run_with_metrics_jsonl_exactly(tracked, monkeypatch):
    run, first = tracked
    client, run_id = _mlflow(run, monkeypatch)
    assert run_id == first["mlflow"]["run_id"]  # the resume continued the same run
    found = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert [r.info.run_id for r in found] == [run_id]
    for key, rows in _scalars(run).items():
        history = client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == rows, key  # exact: written as repr
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    assert record.data.params["train.lr"] == "0.001"
    assert record.data.params["model.hidden_sizes"] == "[16]"
    kept = {Path(a.path).name for a in client.list_artifacts(run_id, "figures")}
    assert kept == {p.name for p in run.glob("*.png")}


def test_csv_added_at_the_resume_holds_every_epoch_exactly(tracked):
    run, _ = tracked
    config = json.loads((run / CONFIG).read_text())
    assert config["track"]["loggers"] == ["tensorboard", "mlflow", "csv"]  # resume keeps, adds
    for key, rows in _scalars(run).items():
        text = (run / "csv" / f"{key}.csv").read_text().splitlines()
        assert text[0] == "epoch,value"
        assert [(int(e), float(v)) for e, v in (r.split(",") for r in text[1:])] == rows, key
    settings = dict(r.split(",", 1) for r in
                    (run / "csv" / "hyperparameters.csv").read_text().splitlines()[1:])
    assert settings["train.epochs"] == "4"  # the CSV logger started at the resume
    assert read_tracking(run)["csv"]["epoch"] == 4


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow"),
                                            ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_is_one_line_naming_the_extra(logger, module, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import then fails as if not installed
    code, err = run_cli(["train", "--epochs", "1", "--out", str(tmp_path), "--name", "r",
                         "--no-progress", "--log", logger], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--log {logger}" in err and 'pip install -e ".[track]"' in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_mlflow_uri_is_refused_without_mlflow_and_kept_on_resume(tracked, tmp_path, capsys):
    run, _ = tracked
    code, err = run_cli(["train", "--out", str(tmp_path), "--name", "r", "--log", "csv",
                         "--mlflow-uri", str(tmp_path / "ml")], capsys)
    assert code == 2 and "is for --log mlflow" in err and not (tmp_path / "r").exists()
    before = (run / CONFIG).read_text(), os.listdir(run)
    code, err = run_cli(["train", "--resume", str(run), "--mlflow-uri", str(tmp_path / "ml")],
                        capsys)
    assert code == 2 and "continues it there" in err, err
    assert ((run / CONFIG).read_text(), os.listdir(run)) == before


def test_config_json_loggers_are_a_list_of_names():
    from pyro_vae.config import TrackConfig, run_config_from_dict

    assert run_config_from_dict({"track": {"loggers": ["csv"]}}).track == TrackConfig(("csv",))
    with pytest.raises(ValueError, match=r"config.track.loggers: expected a list of strings"):
        run_config_from_dict({"track": {"loggers": ["csv", 1]}})
