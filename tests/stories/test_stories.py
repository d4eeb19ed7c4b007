"""The example stories (``examples/stories/``) and a story these tests have never seen,
each trained, evaluated, diagnosed and sampled through the command line.

Each example is trained once per module (tiny settings, digits); the tests then read the
run folder it leaves: the story file kept beside its SHA-256, finite log p(x) estimates,
``diagnostics.nc`` with one posterior variable per latent site, the figures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs.folders import load_run

STORIES = Path(__file__).resolve().parents[2] / "examples" / "stories"
TINY_TRAIN = ["--epochs", "3", "--batch-size", "256", "--hidden", "32", "--no-progress",
              "--device", "cpu"]
TINY_EVALUATE = ["--samples", "100", "--points", "50", "--no-progress"]
TINY_DIAGNOSE = ["--points", "2", "--chains", "2", "--warmup", "15", "--samples", "15",
                 "--local-steps", "20", "--elbo-samples", "50", "--no-progress"]
FIGURES = ("elbo_curves.png", "reconstructions.png", "prior_samples.png", "latent_map.png")


@dataclass(frozen=True)
class Example:
    """One example story as the command line is given it, and the latent sites it has."""

    model: str
    guide: str | None
    args: tuple[str, ...]
    sites: tuple[str, ...]
    fixed: tuple[str, ...]  # ``--set`` values for ``pyro-vae sample``

    def train_args(self) -> list[str]:
        args = ["--model", str(STORIES / self.model)]
        if self.guide:
            args += ["--guide", str(STORIES / self.guide)]
        for arg in self.args:
            args += ["--model-arg", arg]
        return args


EXAMPLES = {
    "ink": Example("ink.py:InkStory", None, ("latent_dim=2", "hidden=32"), ("z", "ink"),
                   ("ink=3.0", "z=0,0")),
    "hierarchical": Example("hierarchical.py:Hierarchical",
                            "hierarchical.py:HierarchicalGuide",
                            ("z1_dim=4", "z2_dim=2", "hidden=32"), ("z1", "z2"), ("z2=0.5,-0.5",)),
    "spatial": Example("spatial.py:Spatial", None, ("latent_dim=2", "hidden=32"), ("z", "pose"),
                       ("pose=0.3,0,0", "z=0,0")),
    "quadrants": Example("quadrants.py:Quadrants", None, ("observed=1", "hidden=32"), ("z",),
                         ("z=0,0",)),
}


def train(out: Path, name: str, args: list[str]) -> Path:
    assert main(["train", *TINY_TRAIN, *args, "--out", str(out), "--name", name]) == 0
    return out / name


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def trained(request, tmp_path_factory) -> tuple[Example, Path]:
    """An example story trained through the CLI, then evaluated (once per module)."""
    example = EXAMPLES[request.param]
    run = train(tmp_path_factory.mktemp("stories"), request.param, example.train_args())
    assert main(["evaluate", str(run), *TINY_EVALUATE]) == 0
    return example, run


def estimates(run: Path) -> dict[str, dict]:
    """The log p(x) estimates in ``evaluation.json``, by estimator name."""
    evaluation = json.loads((run / "evaluation.json").read_text())
    return evaluation.get("estimates", evaluation)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_folder_keeps_the_story_file_and_its_hash(trained):
    example, run = trained
    config = json.loads((run / "config.json").read_text())
    story = config["story"]
    assert (run / "story.py").read_bytes() == (STORIES / example.model.split(":")[0]).read_bytes()
    assert story["model_sha256"] == sha256(run / "story.py")
    # The guide lives in the story's own file, so no second copy is made.
    assert not (run / "guide.py").exists()
    if example.guide:
        assert story["guide"] == "story.py:" + example.guide.split(":")[1]
        assert story["guide_sha256"] == story["model_sha256"]
    for figure in FIGURES:
        assert (run / figure).stat().st_size > 0, figure


def test_evaluation_estimates_are_finite(trained):
    _, run = trained
    evaluation = estimates(run)
    for name in ("prior_mc", "elbo", "iwae"):
        assert math.isfinite(evaluation[name]["mean"]), name
    # On the same draws of the guide, a log-mean-exp is never below the mean of the logs.
    assert evaluation["iwae"]["mean"] >= evaluation["elbo"]["mean"] - 1e-3


@pytest.mark.slow
def test_diagnose_names_every_latent_site(trained):
    example, run = trained
    assert main(["diagnose", str(run), *TINY_DIAGNOSE]) == 0
    for name in ("diagnostics.json", "diagnostics.nc", "diagnostics.html"):
        assert (run / name).stat().st_size > 0, name
    posterior = az.from_netcdf(run / "diagnostics.nc").posterior
    assert sorted(posterior.data_vars) == sorted(example.sites)


def test_sample_with_sites_held_fixed(trained):
    example, run = trained
    fixed = [a for text in example.fixed for a in ("--set", text)]
    assert main(["sample", str(run), *fixed, "--n", "8"]) == 0
    assert (run / "samples.png").stat().st_size > 0
    assert main(["sample", str(run), "--n", "4", "--out", str(run / "prior.png")]) == 0


# --- a story the tests have never seen: a plain function with pyro.module / pyro.param ----

UNSEEN = '''
"""Width and shape: a 2-D code z, and a positive stroke width scaling the logits."""
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

D = 64
decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, D))


def model(x):
    pyro.module("decoder", decoder)
    bias = pyro.param("bias", torch.zeros(D))
    gain = pyro.param("gain", torch.ones(()), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        width = pyro.sample("width", dist.HalfNormal(torch.tensor(1.0)))
        logits = gain * width.unsqueeze(-1) * decoder(z) + bias
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
'''


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> Path:
    """The unseen story written to a file, then trained, evaluated and sampled from the CLI."""
    folder = tmp_path_factory.mktemp("unseen")
    (folder / "width.py").write_text(UNSEEN)
    run = train(folder / "runs", "width", ["--model", f"{folder / 'width.py'}:model"])
    assert main(["evaluate", str(run), *TINY_EVALUATE]) == 0
    assert main(["sample", str(run), "--set", "width=2.0", "--n", "4"]) == 0
    return run


def test_unseen_story_runs_end_to_end(unseen):
    config = json.loads((unseen / "config.json").read_text())
    assert config["story"]["model"] == "story.py:model"
    assert config["story"]["model_sha256"] == sha256(unseen / "story.py")
    assert not (unseen / "guide.py").exists()
    assert math.isfinite(estimates(unseen)["iwae"]["mean"])
    for figure in (*FIGURES, "samples.png"):
        assert (unseen / figure).stat().st_size > 0, figure


def test_unseen_story_config_records_only_what_applies(unseen):
    """A story file's run keeps of the model settings only the automatic guide's, and the
    binarization it used (the story is Bernoulli: dynamic), not ``auto``."""
    config = json.loads((unseen / "config.json").read_text())
    assert config["model"] == {"hidden_sizes": [32], "activation": "relu"}
    assert config["data"]["binarize"] == "dynamic"
    assert load_run(unseen).data.binarize == "dynamic"


def test_unseen_story_trains_its_pyro_params(unseen):
    loaded = load_run(unseen)
    assert loaded.model.param("bias").abs().max() > 1e-3
    gain = float(loaded.model.param("gain").detach())
    assert gain > 0 and abs(gain - 1.0) > 1e-3  # moved, and kept positive by its constraint


@pytest.mark.slow
def test_unseen_story_diagnoses(unseen):
    assert main(["diagnose", str(unseen), *TINY_DIAGNOSE]) == 0
    posterior = az.from_netcdf(unseen / "diagnostics.nc").posterior
    assert sorted(posterior.data_vars) == ["width", "z"]


def test_unseen_story_resumes(unseen):
    before = load_run(unseen).model.param("bias").clone()
    assert main(["train", "--resume", str(unseen), "--epochs", "4", "--no-progress"]) == 0
    lines = (unseen / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert not torch.equal(load_run(unseen).model.param("bias"), before)


BROKEN = {
    "syntax": ("def model(x):\n    return (\n", "model", "broken.py:2"),
    "missing": ("def model(x):\n    pass\n", "story", "has no 'story'"),
    "unobserved": (textwrap.dedent('''
        import pyro, pyro.distributions as dist, torch
        def model(x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        '''), "model", "no observed site"),
    "crashes": (textwrap.dedent('''
        import pyro, pyro.distributions as dist, torch
        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                logits = z @ torch.zeros(3, x.shape[1])
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        '''), "model", "broken.py:6"),
    "global": (textwrap.dedent('''
        import pyro, pyro.distributions as dist, torch
        def model(x):
            scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(1.0)))
            with pyro.plate("data", x.shape[0]):
                logits = scale * torch.ones(x.shape[1])
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
        '''), "model", "'scale'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_story_is_one_line_naming_the_file(case, tmp_path, capsys):
    source, name, expected = BROKEN[case]
    path = tmp_path / "broken.py"
    path.write_text(source)
    out = tmp_path / "runs"
    code = main(["train", *TINY_TRAIN, "--model", f"{path}:{name}", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert path.name in err and expected in err, err
    assert not out.exists() or not any(out.iterdir())  # refused before any folder is made


def test_a_run_is_rebuilt_from_its_copy_and_refuses_an_edited_one(unseen, tmp_path, capsys):
    """The original file can go away (the copy is what evaluate, sample and --resume read);
    an edited copy is refused, naming it, with exit 2."""
    import shutil

    run = shutil.copytree(unseen, tmp_path / "copy")
    (unseen.parent.parent / "width.py").rename(tmp_path / "moved.py")
    try:
        assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
        with open(run / "story.py", "a") as f:
            f.write("\n# edited\n")
        capsys.readouterr()
        assert main(["evaluate", str(run), *TINY_EVALUATE]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "story.py has changed since the run was trained" in err
    finally:
        (tmp_path / "moved.py").rename(unseen.parent.parent / "width.py")


def test_the_quadrants_story_scores_only_the_hidden_quadrants():
    """log p(h | z, o): the image site sums Bernoulli log-probabilities over the hidden
    pixels alone, and its mean copies the observed ones."""
    spec = importlib.util.spec_from_file_location("quadrants", STORIES / "quadrants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mask = module.hidden_pixels((4, 6), observed=2).reshape(4, 6)
    assert mask[:2].sum() == 0 and bool(mask[2:].all())           # the top half is shown
    story = module.Quadrants(24, (4, 6), observed=3, latent_dim=2, hidden=8)
    x = torch.bernoulli(torch.full((3, 24), 0.5), generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 2)
    image = story.x_dist(z, x)
    probs = image.base_dist.base_dist.probs
    by_hand = (torch.distributions.Bernoulli(probs=probs).log_prob(x) * story.hidden).sum(-1)
    assert torch.allclose(image.log_prob(x), by_hand)
    assert int(story.hidden.sum()) == 6  # 3 of 4 quadrants shown: the 2 × 3 bottom right
    assert torch.equal(image.mean[:, ~story.hidden], x[:, ~story.hidden])


@pytest.mark.parametrize("model,guide,arg,takes", [
    ("ink.py:InkStory", None, "latnt_dim=4", "hidden, latent_dim"),
    # A guide file is offered the same pairs: a name either factory takes is not a typo.
    ("hierarchical.py:Hierarchical", "hierarchical.py:HierarchicalGuide", "z3_dim=2",
     "hidden, z1_dim, z2_dim"),
])
def test_a_model_arg_no_factory_takes_is_refused_naming_those_it_takes(model, guide, arg, takes,
                                                                       tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["train", *TINY_TRAIN, "--model", str(STORIES / model), "--model-arg", arg,
            "--out", str(out)]
    code = main(argv + (["--guide", str(STORIES / guide)] if guide else []))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert arg.split("=")[0] in err and takes in err, err
    assert not out.exists() or not any(out.iterdir())


def test_a_model_arg_only_the_guide_file_takes_is_accepted(tmp_path):
    """A pair the story's factory does not name but the guide file's does is the guide's."""
    story = tmp_path / "own.py"
    story.write_text(textwrap.dedent('''
        import pyro, pyro.distributions as dist, torch
        from torch import nn

        class Story(nn.Module):
            def __init__(self, data_dim):
                super().__init__()
                self.net = nn.Linear(2, data_dim)

            def forward(self, x):
                with pyro.plate("data", x.shape[0]):
                    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                    pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)

        class Guide(nn.Module):
            def __init__(self, data_dim, width=8):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(data_dim, width), nn.Tanh(), nn.Linear(width, 4))

            def forward(self, x):
                loc, log_scale = self.net(x).chunk(2, -1)
                with pyro.plate("data", x.shape[0]):
                    pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
        '''))
    args = ["--model", f"{story}:Story", "--guide", f"{story}:Guide", "--model-arg", "width=4",
            "--epochs", "1"]
    assert main(["train", *TINY_TRAIN, *args, "--out", str(tmp_path / "runs"), "--name", "r"]) == 0


@pytest.mark.parametrize("story,arg", [("cvae", "clases=3"), ("m2", "alhpa=3")])
def test_a_shipped_storys_unknown_model_arg_is_refused(story, arg, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["train", *TINY_TRAIN, "--model", story, "--model-arg", arg, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert arg.split("=")[0] in err and "classes" in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flags,expected", [
    (["--model", "{stories}/ink.py"], ["--model", "ink.py:NAME", "ink.py:InkStory", "defines InkStory"]),
    (["--model", "{stories}/hierarchical.py:Hierarchical", "--guide", "{stories}/hierarchical.py"],
     ["--guide", "hierarchical.py:NAME", "Hierarchical, HierarchicalGuide"]),
    (["--model", "no_such_story.py"], ["--model", "no_such_story.py:NAME"]),
])
def test_a_story_file_without_its_name_says_file_py_name(flags, expected, tmp_path, capsys):
    """Not "unknown story": the file is named, the story in it is not."""
    flags = [f.format(stories=STORIES) for f in flags]
    out = tmp_path / "runs"
    code = main(["train", *TINY_TRAIN, *flags, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "unknown story" not in err and all(e in err for e in expected), err
    assert not out.exists()
