"""``pyro-vae train --stream auto|on|off`` (pyro_vae/data/streams.py's choice, wired through
runs.py and the CLI): auto decides by size against a share of the available memory, the
choice is printed and kept in config.json, a streamed run gives the metrics of the same run
held in memory, ``--resume`` continues it, and mistakes are one line with exit status 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import DataConfig
from pyro_vae.data import streams
from pyro_vae.data.loading import load_data
from pyro_vae.data.streams import HeldOutSplit, StreamedSplit

# A tiny model and 1 epoch: these tests are about which data path runs, not about fitting.
TINY = ["train", "--no-progress", "--hidden", "8", "--latent-dim", "2", "--device", "cpu",
        "--batch-size", "64"]


@pytest.fixture
def npy(tmp_path) -> Path:
    x = np.random.default_rng(0).integers(0, 256, size=(300, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


def _train(capsys, *argv: str) -> tuple[int, str]:
    code = main([*TINY, *argv])
    return code, capsys.readouterr().err


def _metrics(run: Path) -> list[tuple[float, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(e["train_elbo"], e["val_elbo"]) for e in lines]


def test_auto_streams_above_the_share_of_memory_and_config_records_it(npy, tmp_path, capsys,
                                                                      monkeypatch):
    """300 6×6 images are 43 kB as float32: held in memory under the real share; with the
    share lowered below that (43 kB > 1e-9 of any machine's memory), auto streams them."""
    code, err = _train(capsys, "--data", str(npy), "--epochs", "1", "--out", str(tmp_path),
                       "--name", "small")
    assert code == 0 and "training images held in memory (--stream auto: " in err
    assert json.loads((tmp_path / "small" / "config.json").read_text())["data"]["stream"] == "off"
    monkeypatch.setattr(streams, "STREAM_SHARE", 1e-9)
    code, err = _train(capsys, "--data", str(npy), "--epochs", "1", "--out", str(tmp_path),
                       "--name", "big")
    assert code == 0 and f"training images streamed from {npy}" in err and "auto" in err
    assert json.loads((tmp_path / "big" / "config.json").read_text())["data"]["stream"] == "on"


def test_streamed_run_is_the_resident_run_and_resumes(npy, tmp_path, capsys):
    """--stream on and --stream off give the same metrics (same rows, same draws); a
    streamed run resumed from epoch 1 to 2 ends where 2 epochs straight do."""
    common = ["--data", str(npy), "--out", str(tmp_path)]
    for mode, epochs in (("on", "2"), ("off", "2"), ("on", "1")):
        code, err = _train(capsys, *common, "--stream", mode, "--epochs", epochs,
                           "--name", f"{mode}{epochs}")
        assert code == 0, err
        config = json.loads((tmp_path / f"{mode}{epochs}" / "config.json").read_text())
        assert config["data"]["stream"] == mode
    assert _metrics(tmp_path / "on2") == _metrics(tmp_path / "off2")
    code = main(["train", "--no-progress", "--resume", str(tmp_path / "on1"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 0 and f"training images streamed from {npy} " in err, err
    assert _metrics(tmp_path / "on1") == _metrics(tmp_path / "on2")
    # evaluate scores the held-out test rows; the streamed training split is never read whole
    assert main(["evaluate", str(tmp_path / "on2"), "--samples", "2", "--points", "20"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "on2"), "--split", "train", "--points", "20"]) == 2
    assert "are streamed from the file, never read whole" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--data", "digits", "--stream", "on"], "--stream on: digits is neither a .npy file nor a "
                                             "folder of image files"),
    (["--stream", "on", "--binarize", "none", "--likelihood", "bernoulli"],
     "--stream on with --binarize none: the story scores pixels 0 or 1"),
])
def test_refusals_are_one_line(npy, tmp_path, capsys, argv, message):
    if "--data" not in argv:
        argv = [*argv, "--data", str(npy)]
    code, err = _train(capsys, *argv, "--epochs", "1", "--out", str(tmp_path), "--name", "r")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"pyro-vae train: error: {message}"), err
    assert not (tmp_path / "r").exists()


def test_a_bad_stream_value_is_refused(npy, tmp_path, capsys):
    code, err = _train(capsys, "--data", str(npy), "--stream", "maybe", "--out", str(tmp_path),
                       "--name", "bad")
    assert code == 2 and err.strip().splitlines() == [
        "pyro-vae train: error: --stream must be one of auto, on, off, got 'maybe'"]
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io: moving to torchcodec
@pytest.mark.parametrize("binarize", ["threshold", "none"])
def test_a_folder_streamed_or_held_gives_the_same_splits(tmp_path, binarize):
    """An image folder (new as --data) held in memory and streamed: the same rows in each
    split, thresholded alike; validation and test are read whole, capped rows each."""
    from torchvision.io import write_png
    x = torch.randint(0, 256, (40, 1, 5, 4), dtype=torch.uint8)
    for i, image in enumerate(x):
        write_png(image, str(tmp_path / f"{i:03d}.png"))
    cfg = DataConfig(name=str(tmp_path), binarize=binarize, val_fraction=0.2, test_fraction=0.2)
    held, streamed = (load_data(replace(cfg, stream=mode), binary_likelihood=False)
                      for mode in ("off", "on"))
    assert isinstance(streamed.train, StreamedSplit) and isinstance(streamed.val, HeldOutSplit)
    assert streamed.image_shape == held.image_shape == (5, 4)
    assert torch.equal(streamed.train.x[:], held.train.x)
    for name in ("val", "test"):
        assert torch.equal(getattr(streamed, name).x, getattr(held, name).x)
    capped = streams.streamed_data(tmp_path, cfg, binarize, held_out_cap=3)
    assert len(capped.val) == len(capped.test) == 3
    assert torch.equal(capped.val.x, held.val.x[:3])
