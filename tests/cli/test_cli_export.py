"""``pyro-vae export RUN``: the files and ``model_card.json`` in ``RUN/export`` (or ``--out``),
read back independently of the exporter (onnxruntime, ``torch.export.load``) against the run's
own ``x_dist`` and ``z_dist``; what cannot be exported, and ONNX without its packages, is one
line with exit status 2 and leaves no file."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs import load_checkpoint, load_run

from support import run_cli, train_tiny

BRANCHY = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    from torch import nn


    class Branchy(nn.Module):
        def __init__(self, data_dim):
            super().__init__()
            self.decoder = nn.Linear(2, data_dim)

        def x_dist(self, z):
            logits = self.decoder(z)
            if logits.mean() > 0:  # a Python branch on a tensor's value
                logits = logits - 1
            return dist.Bernoulli(logits=logits).to_event(1)

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", self.x_dist(z), obs=x)
    ''')


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"), "vae")


@pytest.fixture(scope="module")
def exported(run) -> dict:
    """``export RUN --check`` (ONNX, both parts, into RUN/export): its card."""
    assert main(["export", str(run), "--check", "--no-progress"]) == 0
    return json.loads((run / "export" / "model_card.json").read_text())


def test_the_card_says_what_the_files_are(run, exported):
    files = {f["file"]: f for f in exported["files"]}
    assert set(files) == {"decoder.onnx", "encoder.onnx"}
    decoder, encoder = files["decoder.onnx"], files["encoder.onnx"]
    assert decoder["inputs"] == [{"name": "z", "shape": ["batch", 2], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in decoder["outputs"]] == \
        [("logits", ["batch", 64]), ("mean", ["batch", 64])]
    assert [o["name"] for o in encoder["outputs"]] == ["loc", "scale"]
    assert encoder["inputs"][0]["shape"] == ["batch", 64]
    assert exported["likelihood"] == {"site": "x", "name": "bernoulli",
                                      "distribution": "Independent(BernoulliLogits, 1)"}
    assert [s["name"] for s in exported["latent_sites"]] == ["z"]
    digest = load_checkpoint(run / "checkpoint.safetensors").digest
    assert exported["source"] == {"run": str(run.resolve()), "checkpoint": "last", "epoch": 2,
                                  "sha256": digest}
    assert exported["evaluation"]["epochs"] == 2
    assert {"torch", "onnx", "onnxruntime"} <= set(exported["versions"])
    assert [c["part"] for c in exported["check"]] == ["decoder", "encoder"]
    assert all(c["agrees"] and c["max_abs_error"] <= 1e-5 for c in exported["check"])


def test_the_onnx_files_give_the_runs_own_distributions(run, exported):
    """Read with onnxruntime alone, at one row and at seven (traced on 16)."""
    import onnxruntime

    loaded = load_run(run)
    decoder = onnxruntime.InferenceSession(str(run / "export" / "decoder.onnx"))
    encoder = onnxruntime.InferenceSession(str(run / "export" / "encoder.onnx"))
    gen = torch.Generator().manual_seed(3)
    for rows in (1, 7):
        z, x = torch.randn(rows, 2, generator=gen), torch.rand(rows, 64, generator=gen)
        logits, mean = decoder.run(["logits", "mean"], {"z": z.numpy()})
        loc, scale = encoder.run(["loc", "scale"], {"x": x.numpy()})
        with torch.no_grad():
            p, q = loaded.model.x_dist(z).base_dist, loaded.guide.z_dist(x).base_dist
            for got, want in ((logits, p.logits), (mean, p.mean), (loc, q.loc),
                              (scale, q.scale)):
                assert (torch.from_numpy(got) - want).abs().max() <= 1e-5


def test_pt2_of_one_part_into_another_folder(run, tmp_path, capsys):
    out = tmp_path / "pt2"
    assert main(["export", str(run), "--format", "pt2", "--part", "decoder", "--out", str(out),
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "decoder.pt2"),
                                               str(out / "model_card.json")]
    program = torch.export.load(out / "decoder.pt2").module()
    z = torch.randn(3, 2)
    with torch.no_grad():
        want = load_run(run).model.x_dist(z).base_dist.logits
        assert (program(z)[0] - want).abs().max() <= 1e-5


def test_onnx_without_its_packages_is_one_line_naming_the_extra(run, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    code, err = run_cli(["export", str(run), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "onnxruntime" in err and 'pip install -e ".[export]"' in err
    assert not (tmp_path / "e").exists()


def test_a_branch_on_a_value_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    run = train_tiny(tmp_path, "branchy", "--epochs", "1",
                     "--model", f"{tmp_path / 'branchy.py'}:Branchy")
    capsys.readouterr()
    code, err = run_cli(["export", str(run), "--format", "pt2", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot export Branchy.x_dist (story.py line" in err, err
    assert "if logits.mean() > 0:" in err and "data-dependent control flow" in err, err
    assert not (run / "export").exists()
