"""Run folders from the Python API."""

from __future__ import annotations

import torch

from pyro_vae.runs.folders import CHECKPOINT, load_or_train, load_run


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


def test_a_run_folder_of_pyro_vae_0_1_0_still_loads_and_resumes(tiny_config, tmp_path):
    """0.1.0 kept the parts' settings as shared ModelConfig fields and saved modules without
    the Program's ``story.`` level; both are read as they are now, and nothing is lost."""
    import dataclasses
    import json

    from torch import nn

    from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
    from pyro_vae.runs.folders import CONFIG, resume_run, train_run
    from pyro_vae.stories.build import with_options

    cfg = dataclasses.replace(tiny_config, model=with_options(
        dataclasses.replace(tiny_config.model, prior="mixture"), components=3))
    fitted = train_run(cfg, tmp_path, "old", progress=False).fit
    raw = json.loads((tmp_path / "old" / CONFIG).read_text())
    raw["model"].pop("options")
    raw["model"].update(components=3, flow_layers=2, sigma=0.1, sigma_floor=0.01, scale_floor=1e-3)
    raw.pop("story")
    (tmp_path / "old" / CONFIG).write_text(json.dumps(raw))
    ckpt = load_checkpoint(tmp_path / "old" / CHECKPOINT)
    legacy = nn.ModuleDict({"model": fitted.model.story, "guide": fitted.guide.story})
    save_checkpoint(tmp_path / "old" / CHECKPOINT, legacy, fitted.optimizer, ckpt.state, ckpt.meta)
    assert not any(".story." in k for k in load_checkpoint(tmp_path / "old" / CHECKPOINT).modules)

    loaded = load_run(tmp_path / "old")
    assert loaded.model.prior.locs.shape == (3, 2)
    x = loaded.data.eval_split("test")
    assert torch.equal(loaded.guide.z_dist(x).mean, fitted.guide.z_dist(x).mean)
    assert len(resume_run(tmp_path / "old", 3, progress=False).fit.history) == 3


def test_an_unknown_map_site_is_refused_before_the_folder_exists(tiny_config, tmp_path):
    import dataclasses

    import pytest

    from pyro_vae.runs.folders import train_run

    cfg = dataclasses.replace(tiny_config, story=dataclasses.replace(tiny_config.story,
                                                                     map_site="w"))
    with pytest.raises(ValueError, match=r"--map-site w: the story's latent sites are \['z'\]"):
        train_run(cfg, tmp_path, "r", progress=False)
    assert not (tmp_path / "r").exists()
