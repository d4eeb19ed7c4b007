"""A run folder written before the engine's layout changed (0.1, when ``pyro_vae/fit.py`` and
``pyro_vae/checkpoint.py`` were modules of their own) loads, samples and resumes unchanged.

``fixtures/pre-0.2`` was written by commit bbb3050 (``pyro-vae train --epochs 3 --hidden 16
--latent-dim 2``, digits): its checkpoint, config, metrics and summary, without the figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from pyro_vae.runs.folders import CHECKPOINT, METRICS, load_run, resume_run

OLD = Path(__file__).resolve().parent / "fixtures" / "pre-0.2"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "pre-0.2"
    shutil.copytree(OLD, folder)
    return folder


def test_the_checkpoint_names_no_module_path():
    """What is stored is tensors and JSON of names and numbers: nothing a move can break."""
    with safe_open(str(OLD / CHECKPOINT), "pt") as f:
        header = json.dumps(f.metadata())
    assert "pyro_vae." not in header and "models." not in header and "guides." not in header


def test_an_old_folder_loads_and_its_model_decodes(tmp_path):
    run = load_run(_copy(tmp_path), "cpu")
    z = run.model.z_dist().sample((4,))
    means = run.model.x_dist(z).mean
    assert means.shape == (4, 64) and bool(((means >= 0) & (means <= 1)).all())


def test_an_old_folder_resumes_where_it_stopped(tmp_path):
    folder = _copy(tmp_path)
    before = (folder / METRICS).read_text().splitlines()
    saved = {k: v.clone() for k, v in load_run(folder, "cpu").model.state_dict().items()}
    resume_run(folder, 4, changes={"device": "cpu"}, progress=False)
    after = (folder / METRICS).read_text().splitlines()
    assert after[:3] == before and len(after) == 4
    assert json.loads(after[3])["epoch"] == 4
    moved = load_run(folder, "cpu").model.state_dict()
    assert any(not torch.equal(saved[k], moved[k]) for k in saved)  # the fourth epoch trained
