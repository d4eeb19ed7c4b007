"""Run folders from the Python API."""

from __future__ import annotations

import torch

from pyro_vae.runs import CHECKPOINT, load_or_train, load_run


def test_load_or_train_fits_once_then_reuses(tiny_config, tmp_path):
    first = load_or_train(None, tiny_config, tmp_path, "r")
    stamp = (tmp_path / "r" / CHECKPOINT).stat().st_mtime_ns
    again = load_or_train(None, tiny_config, tmp_path, "r")
    assert (tmp_path / "r" / CHECKPOINT).stat().st_mtime_ns == stamp, "no second fit"
    given = load_or_train(tmp_path / "r", tiny_config, tmp_path / "elsewhere", "x")
    assert not (tmp_path / "elsewhere").exists()
    x = first.data.eval_split("test")
    for loaded in (again, given, load_run(tmp_path / "r")):
        assert torch.equal(loaded.guide.z_dist(x).mean, first.guide.z_dist(x).mean)
