"""A story file with a discrete latent marked for enumeration, through the command line: the
default objective sums it out, ``sample --set`` holds it, and a shape that breaks only under
enumeration is one line naming the file and line."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.cli.sample import fixed_values
from pyro_vae.predictive import prior_predictive
from pyro_vae.runs import load_run

MIXTURE = '''import pyro
import pyro.distributions as dist
import torch
from torch import nn

K = 3


class Mixture(nn.Module):
    """c ~ Cat(1/K); z ~ N(m_c, I); x ~ Bernoulli(W z + b_c)."""

    def __init__(self, data_dim, image_shape=None):
        super().__init__()
        self.decoder = nn.Linear(2, data_dim)
        self.bias = nn.Parameter(torch.randn(K, data_dim))
        self.locs = nn.Parameter(torch.randn(K, 2))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(K) / K), infer=ENUMERATE)
            z = pyro.sample("z", dist.Normal(self.locs[c], 1.0).to_event(1))
            logits = self.decoder(z) + self.bias[c].reshape(RESHAPE)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
'''
TRAIN = ["--epochs", "1", "--batch-size", "512", "--hidden", "8", "--no-progress",
         "--device", "cpu"]


def story(folder, enumerate_="{'enumerate': 'parallel'}", reshape="c.shape + (-1,)"):
    path = folder / "mixture.py"
    path.write_text(MIXTURE.replace("ENUMERATE", enumerate_).replace("RESHAPE", reshape))
    return f"{path}:Mixture"


def train(spec, out, *extra):
    return main(["train", "--model", spec, *TRAIN, "--out", str(out), "--name", "m", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixture")
    assert train(story(folder), folder / "runs") == 0
    return folder / "runs" / "m"


def test_the_default_objective_sums_a_marked_site_and_says_so(tmp_path, capsys):
    assert train(story(tmp_path), tmp_path / "runs") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "enumeration" in line]
    assert said == ["the story marks 'c' for enumeration: training with --objective enum, "
                    "which sums it out exactly"]
    config = json.loads((tmp_path / "runs" / "m" / "config.json").read_text())
    assert config["train"]["objective"] == "enum"


def test_another_objective_is_refused_naming_the_one_that_sums(tmp_path, capsys):
    assert train(story(tmp_path), tmp_path / "runs", "--objective", "elbo") == 2
    err = capsys.readouterr().err
    assert "--objective elbo: the story marks site 'c' for enumeration; train it with " \
           "--objective enum" in err
    assert not (tmp_path / "runs" / "m").exists()


def test_an_unmarked_discrete_site_is_told_how_to_mark_it(tmp_path, capsys):
    assert train(story(tmp_path, enumerate_="{}"), tmp_path / "runs") == 2
    line = capsys.readouterr().err.strip()
    assert "latent site 'c' is discrete and not marked for enumeration" in line
    assert "infer={'enumerate': 'parallel'}" in line and "guides/" not in line
    assert len(line.splitlines()) == 1


def test_a_shape_that_breaks_only_under_enumeration_is_one_line_naming_the_line(tmp_path, capsys):
    spec = story(tmp_path, reshape="x.shape[0], -1")  # right for c [N], wrong for c [K, 1]
    assert train(spec, tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    line = 1 + MIXTURE.splitlines().index(
        "            logits = self.decoder(z) + self.bias[c].reshape(RESHAPE)")
    assert f"mixture.py:{line}: the story fails when 'c' is summed out" in err
    assert not (tmp_path / "runs" / "m").exists()


def test_sample_holds_an_enumerated_site_at_a_value(run, capsys):
    assert main(["sample", str(run), "--set", "c=2", "--n", "4", "--out",
                 str(run / "c2.png")]) == 0
    loaded = load_run(run)
    fixed = fixed_values(loaded, ["c=2", "z=0,0"], 3)
    assert fixed["c"].tolist() == [2, 2, 2]
    x = loaded.data.eval_split("test")[:3]
    mean, _ = prior_predictive(loaded.model, x, {}, fixed)
    story_ = loaded.model.story
    expected = torch.sigmoid(story_.decoder(torch.zeros(2)) + story_.bias[2])
    assert torch.allclose(mean, expected.expand_as(mean), atol=1e-5)
    assert main(["sample", str(run), "--set", "c=3"]) == 2
    assert "outside the site's support" in capsys.readouterr().err


def test_diagnose_reports_the_enumerated_site(run, capsys):
    assert main(["diagnose", str(run), "--points", "2", "--chains", "1", "--warmup", "10",
                 "--samples", "10", "--local-steps", "5", "--elbo-samples", "20"]) == 0
    err = capsys.readouterr().err
    assert "c: share of images per value" in err
    summary = json.loads((run / "diagnostics.json").read_text())
    c = summary["discrete"]["c"]
    assert c["source"] == "story" and c["values"] == 3
    assert abs(sum(c["share_per_value"]) - 1) < 1e-9
    assert sum(map(sum, c["by_label"])) == c["points"]  # digits have labels
    assert any(v["check"].startswith("Discrete site c") for v in summary["verdicts"])
    assert (run / "diagnose_discrete_c.png").exists()
    assert "diagnose_discrete_c" not in (run / "diagnostics.html").read_text()  # inlined, not linked
