"""benchmarks/m2_protocol.py: its supervised baseline is the M2 story's own classifier trained
on the run's labelled rows, the same numbers each time for the epochs it has, and its table
reads run folders without training (tiny settings on the offline digits)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _protocol():
    spec = importlib.util.spec_from_file_location("m2_protocol", BENCH / "m2_protocol.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _digits_config(protocol, epochs: int):
    cfg = protocol.run_config(protocol.RECIPES["labelled"], 50, 0, epochs, "cpu", Path("."))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_sizes=(16,),
                                                              latent_dim=2),
                               data=dataclasses.replace(cfg.data, name="digits", root=None),
                               train=dataclasses.replace(cfg.train, batch_size=256, lr=0.01))


def test_the_baseline_repeats_its_epochs_and_learns_from_the_labels():
    protocol = _protocol()
    two, three = (protocol.baseline(_digits_config(protocol, n)) for n in (2, 3))
    assert two["epochs"] == three["epochs"][:2]           # a longer baseline extends a shorter one
    assert two["batch"] == 50 and two["steps_per_epoch"] == 6  # 1,437 training digits / 256
    first, last = (three["epochs"][i]["test_accuracy"] for i in (0, -1))
    assert 0.3 < last <= 1 and last > first               # it learns, well above chance (0.1)


def test_the_table_reads_the_folders_and_says_what_is_not_done(tmp_path, capsys):
    protocol = _protocol()
    run = tmp_path / "labelled" / "m2-100-s0"
    run.mkdir(parents=True)
    lines = [{"epoch": e, "val_accuracy": v, "test_accuracy": t}
             for e, v, t in ((1, 0.5, 0.6), (2, 0.7, 0.65), (3, 0.6, 0.9))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = [{"epoch": e, "val_accuracy": 0.7, "test_accuracy": 0.7} for e in range(1, 6)]
    (run / "baseline.json").write_text(json.dumps({"epochs": base}))
    args = protocol.parse_args(["--labels", "100", "600", "--seeds", "0", "--out", str(tmp_path)])
    text = protocol.table(args)
    row = next(line for line in text.splitlines() if line.startswith("| 100 |"))
    # last epoch 0.9; at best validation (epoch 2) 0.65: never the best test accuracy chosen
    assert "| 3 | 0.9000 | 0.6500 | 0.7000 | 0.7000 | +0.2000 |" in row
    assert "not yet: runs unfinished" in text
    assert protocol.main(["--list"]) == 0 and "--labelled-every 2" in capsys.readouterr().out


def test_a_run_with_its_epochs_summary_and_baseline_is_finished_without_weights(tmp_path):
    """A run carried by carry.py as records only is done: the protocol skips it (and its M1)."""
    protocol = _protocol()
    run = tmp_path / "m2-100-s1"
    run.mkdir()
    assert not protocol.finished(run, 2)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (run / "baseline.json").write_text(json.dumps({"epochs": [{"epoch": 1}, {"epoch": 2}]}))
    assert not protocol.finished(run, 2)  # no summary: the fit has not closed the run
    (run / "summary.json").write_text("{}")
    assert protocol.finished(run, 2) and not protocol.finished(run, 3)
    (run / "baseline.json").write_text(json.dumps({"epochs": [{"epoch": 1}]}))
    assert not protocol.finished(run, 2)  # the baseline is short of the run's epochs


def test_the_m1m2_recipe_fits_its_vae_first_and_its_baseline_reads_the_frozen_code(tmp_path):
    """The stacked recipe: the VAE of its seed is trained (and resumable) in ``out/m1``, the
    run's config names it, and the baseline trains M2's classifier on M1's code alone."""
    protocol = _protocol()
    recipe = dataclasses.replace(protocol.RECIPES["m1m2"], m1_epochs=20, args={"width": 16},
                                 m1_train={"batch_size": 64, "lr": 0.01})
    cfg = protocol.run_config(recipe, 50, 0, 4, "cpu", Path("."), tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_sizes=(32,),
                                                             latent_dim=4),
                              data=dataclasses.replace(cfg.data, name="digits", root=None),
                              train=dataclasses.replace(cfg.train, batch_size=256, lr=0.01))
    m1 = protocol.m1_folder(tmp_path, 0)
    assert cfg.story.args["m1"] == str(m1) and cfg.story.model == "m1m2"
    m1_cfg = protocol.m1_config(recipe, cfg)
    assert m1_cfg.data.labels is None and m1_cfg.train.epochs == 20 and not m1_cfg.story.model
    assert protocol.train_m2(m1, m1_cfg, lambda: False)
    result = protocol.baseline(cfg)
    first, last = (result["epochs"][i]["test_accuracy"] for i in (0, -1))
    assert 0.3 < last <= 1 and last > first and len(result["epochs"]) == 4
    # m1m2-active's dimensions are the ones the fit's own metrics count as active units
    # (diagnose's measure, on the same 1,000 validation images).
    keep = protocol.with_active(cfg).story.args["keep"]
    counted = protocol.records(m1)[-1]["active_units_z"]
    assert 0 < len(keep) == counted and all(0 <= i < 4 for i in keep)


def test_a_stop_during_the_baseline_leaves_no_baseline_behind(tmp_path):
    """A signal (or the budget) while the baseline is computed stops it at the next epoch;
    nothing half-made is written, and the next invocation computes it whole."""
    protocol = _protocol()
    cfg = _digits_config(protocol, 3)
    with pytest.raises(protocol.Stopped):
        protocol.baseline_records(tmp_path / "run", cfg, stop=lambda: True)
    assert not (tmp_path / "run" / protocol.BASELINE).exists()
