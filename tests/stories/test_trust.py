"""A run folder's story file runs only if this user trusts it (``pyro_vae.stories.trust``).

The attack: a run folder from someone else whose ``story.py`` has one line added (here it
writes a marker file) and whose ``config.json`` digest was updated to match. ``sample``,
``evaluate``, ``diagnose``, ``export``, ``explore`` and ``train --resume`` refuse it in one line naming the file and
``--trust-story``, exit 2, and the marker is never written. A folder trained here opens
without the flag; the flag opens a foreign one once and is remembered; built-in stories never
need it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from pyro_vae import UntrustedStoryError
from pyro_vae.cli import main
from pyro_vae.runs.folders import load_run
from pyro_vae.stories.trust import TRUST_ENV, trust_file, trusted_digests

STORY = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn


    class Story(nn.Module):
        def __init__(self, data_dim):
            super().__init__()
            self.decoder = nn.Linear(2, data_dim)

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)
    ''')
GUIDE = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    from torch import nn


    class Guide(nn.Module):
        def __init__(self, data_dim):
            super().__init__()
            self.net = nn.Linear(data_dim, 4)

        def forward(self, x):
            loc, log_scale = self.net(x).chunk(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
    ''')
TINY = ["--epochs", "1", "--batch-size", "256", "--no-progress", "--device", "cpu"]
COMMANDS = {
    "sample": lambda run, out: ["sample", str(run), "--n", "2", "--out", str(out / "s.png")],
    "evaluate": lambda run, out: ["evaluate", str(run), "--samples", "5", "--points", "4",
                                  "--no-progress"],
    "diagnose": lambda run, out: ["diagnose", str(run), "--points", "1", "--chains", "1",
                                  "--warmup", "5", "--samples", "5", "--local-steps", "2",
                                  "--elbo-samples", "5", "--no-progress", "--out", str(out)],
    "resume": lambda run, out: ["train", "--resume", str(run), "--epochs", "2", "--no-progress"],
    "export": lambda run, out: ["export", str(run), "--format", "pt2", "--no-progress",
                                "--out", str(out / "export")],
    "explore": lambda run, out: ["explore", str(run), "--out", str(out / "e.html")],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A story file and a guide file, trained here (so trusted by the session's trust file)."""
    folder = tmp_path_factory.mktemp("trusted")
    (folder / "story_src.py").write_text(STORY)
    (folder / "guide_src.py").write_text(GUIDE)
    assert main(["train", *TINY, "--model", f"{folder / 'story_src.py'}:Story",
                 "--guide", f"{folder / 'guide_src.py'}:Guide", "--out", str(folder / "runs"),
                 "--name", "r"]) == 0
    return folder / "runs" / "r"


def tampered(run: Path, to: Path, marker: Path, file: str = "story.py") -> Path:
    """A copy of ``run`` whose ``file`` writes ``marker`` when imported, with config.json's
    digest updated to match: what a stranger could send."""
    copy = shutil.copytree(run, to)
    with open(copy / file, "a") as f:
        f.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    config = json.loads((copy / "config.json").read_text())
    key = "model_sha256" if file == "story.py" else "guide_sha256"
    config["story"][key] = hashlib.sha256((copy / file).read_bytes()).hexdigest()
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_edited_story_with_its_digest_updated_is_refused_before_it_runs(
        command, trained, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tampered(trained, tmp_path / "evil", marker)
    capsys.readouterr()
    assert main(COMMANDS[command](run, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{run / 'story.py'} was not written by pyro-vae train" in err, err
    assert "--trust-story" in err, err
    assert not marker.exists()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_an_edited_guide_file_is_refused_too(trained, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tampered(trained, tmp_path / "evil", marker, file="guide.py")
    assert main(COMMANDS["sample"](run, tmp_path)) == 2
    assert f"{run / 'guide.py'} was not written" in capsys.readouterr().err
    assert not marker.exists()


def test_a_folder_trained_here_opens_without_the_flag(trained, tmp_path, _trust_file):
    digests = trusted_digests()
    config = json.loads((trained / "config.json").read_text())["story"]
    assert {config["model_sha256"], config["guide_sha256"]} <= set(digests)
    assert digests[config["model_sha256"]]["by"] == "train"
    assert trust_file() == _trust_file  # the session's file, never the real home
    for command in ("sample", "evaluate"):
        assert main(COMMANDS[command](trained, tmp_path)) == 0


def test_the_flag_trusts_once_and_is_remembered(trained, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tampered(trained, tmp_path / "theirs", marker)
    assert main([*COMMANDS["sample"](run, tmp_path), "--trust-story"]) == 0
    assert marker.read_text() == "ran"  # the user said so: their code ran
    digest = json.loads((run / "config.json").read_text())["story"]["model_sha256"]
    assert trusted_digests()[digest]["by"] == "--trust-story"
    marker.unlink()
    assert main(COMMANDS["sample"](run, tmp_path)) == 0  # no flag the second time
    assert marker.exists()


def test_the_python_api_refuses_and_trusts_the_same_way(trained, tmp_path):
    marker = tmp_path / "marker"
    run = tampered(trained, tmp_path / "api", marker)
    with pytest.raises(UntrustedStoryError, match="trust_story=True"):
        load_run(run)
    assert not marker.exists()
    assert load_run(run, trust_story=True).model is not None
    assert marker.exists()


def test_cached_bytecode_beside_a_trusted_story_is_never_run(trained, tmp_path):
    """A ``__pycache__`` entry that claims to be ``story.py`` (same size and mtime in its
    header) is ignored: the bytes whose digest was checked are the bytes run."""
    run = shutil.copytree(trained, tmp_path / "pyc")
    marker = tmp_path / "marker"
    evil = compile(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n",
                   str(run / "story.py"), "exec")
    stat = (run / "story.py").stat()
    header = (importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
              + (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
              + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    cache = Path(importlib.util.cache_from_source(str(run / "story.py")))
    cache.parent.mkdir()
    cache.write_bytes(header + marshal.dumps(evil))
    loaded = load_run(run)
    assert not marker.exists() and loaded.model is not None


def test_built_in_stories_never_need_the_flag(tiny_config, tmp_path, monkeypatch):
    from pyro_vae.runs.folders import train_run

    train_run(tiny_config, tmp_path, "vae", progress=False)
    monkeypatch.setenv(TRUST_ENV, str(tmp_path / "empty" / "trusted.json"))
    assert load_run(tmp_path / "vae").model is not None
    assert not (tmp_path / "empty").exists()  # nothing was read or written


def test_a_broken_trust_file_is_one_line(trained, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "trusted.json"
    broken.write_text("{not json")
    monkeypatch.setenv(TRUST_ENV, str(broken))
    assert main(COMMANDS["sample"](trained, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{broken}: not a pyro-vae trust file" in err, err


def test_the_trust_file_lives_in_the_users_config_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(TRUST_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trust_file() == tmp_path / "xdg" / "pyro-vae" / "trusted.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trust_file() == tmp_path / "home" / ".config" / "pyro-vae" / "trusted.json"
    assert os.environ.get(TRUST_ENV) is None
