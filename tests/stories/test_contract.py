"""Contract: every allowed prior × guide × likelihood × objective builds, has matching
sites, takes one step with a finite loss, and sends gradient to every parameter.
Refused pairs are refused with a reason, and the CLI records and restores the choices.

The ``*-jit`` objectives appear here with one prior/guide pair per likelihood;
tests/infer/test_objectives.py shows on every prior/guide pair that they give the
same loss and gradients as their untraced twins, which are all checked here.
"""

from __future__ import annotations

import itertools
import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.guides.amortized import GUIDES
from pyro_vae.infer.objectives import OBJECTIVES, build_objective
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.priors import PRIORS
from pyro_vae.programs import as_program, scale_latents, unique_parameters
from pyro_vae.stories.build import build_vae, with_options
from pyro_vae.stories.catalog import STORIES, default_objective

REFUSED = {("vamp", "iaf")}
PAIRS = [pg for pg in itertools.product(sorted(PRIORS), sorted(GUIDES)) if pg not in REFUSED]
TRACED = sorted(o for o in OBJECTIVES if o.endswith(("-jit", "-auto")))
# Compiling takes ~13 s a graph on a 2-core CPU: one case each (its exactness against the
# untraced loss is tests/infer/test_objectives.py's).
COMPILED = sorted(o for o in OBJECTIVES if o.endswith("-compile"))
UNTRACED = sorted(set(OBJECTIVES) - set(TRACED) - set(COMPILED))
LIKS = sorted(LIKELIHOODS)
CASES = [(p, g, lik, o) for (p, g), lik, o in itertools.product(PAIRS, LIKS, UNTRACED)]
CASES += [("normal", "diagonal", lik, o) for lik, o in itertools.product(LIKS, TRACED)]
CASES += [("normal", "diagonal", "gaussian-pixel", o) for o in COMPILED]


def _build(prior: str, guide: str, likelihood: str = "bernoulli"):
    cfg = with_options(ModelConfig(latent_dim=2, hidden_sizes=(8,), activation="tanh", prior=prior,
                                   guide=guide, likelihood=likelihood), components=3, flow_layers=1)
    return build_vae(cfg, data_dim=6, seed=0)


def _sites(trace) -> tuple[set[str], set[str]]:
    latent = {n for n, s in trace.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
    observed = {n for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]}
    return latent, observed


@pytest.mark.parametrize("prior,guide,likelihood,objective", CASES)
def test_combination_trains(prior, guide, likelihood, objective):
    model, q = _build(prior, guide, likelihood)
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    pyro.set_rng_seed(0)
    guide_trace = poutine.trace(scale_latents(q, 0.5)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(scale_latents(model, 0.5),
                                               trace=guide_trace)).get_trace(x)
    assert _sites(guide_trace) == ({"z"}, set())
    assert _sites(model_trace) == ({"z"}, {"x"})
    assert guide_trace.nodes["z"]["value"].shape == (5, 2)

    params = unique_parameters(model, q)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    loss = build_objective(TrainConfig(objective=objective, particles=2)).differentiable_loss(
        model, q, x, beta=0.5)
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    for (name, p) in _named(model, q):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, params))


def _named(model, guide):
    seen = set()
    for prefix, module in (("model", model), ("guide", guide)):
        for name, p in module.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield f"{prefix}.{name}", p


@pytest.mark.parametrize("prior,guide", sorted(REFUSED))
def test_refused_pairs_say_why(prior, guide):
    with pytest.raises(ValueError, match=f"the {prior} prior cannot be used with the '{guide}'"):
        _build(prior, guide)


def test_refused_pairs_are_exactly_the_listed_ones():
    """REFUSED above is not a way to hide failures: every other pair builds."""
    for pair in itertools.product(PRIORS, GUIDES):
        try:
            _build(*pair)
        except ValueError:
            assert pair in REFUSED
        else:
            assert pair not in REFUSED


CHOICES = ["--prior", "mixture", "--guide", "iaf", "--objective", "iwae", "--particles", "2",
           "--beta", "0.5", "--kl-warmup", "1", "--components", "3", "--flow-layers", "1"]


def test_cli_records_the_choices_and_resume_restores_them(tmp_path, capsys):
    common = ["--hidden", "16", "--batch-size", "512", "--no-progress"]
    assert main(["train", "--epochs", "1", "--out", str(tmp_path), "--name", "r", *common,
                 *CHOICES]) == 0
    run = tmp_path / "r"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["prior"], saved["model"]["guide"]) == ("mixture", "iaf")
    options = saved["model"]["options"]
    assert options["prior"] == {"mixture": {"components": 3, "scale_floor": 1e-3}}
    assert options["guide"] == {"iaf": {"layers": 1, "scale_floor": 1e-3}}
    assert (saved["train"]["objective"], saved["train"]["particles"]) == ("iwae", 2)
    assert (saved["train"]["beta"], saved["train"]["kl_warmup"]) == (0.5, 1)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["model"] == saved["model"]
    assert {k: v for k, v in resumed["train"].items() if k != "epochs"} == \
        {k: v for k, v in saved["train"].items() if k != "epochs"}
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and history[1]["beta"] == 0.5


def test_part_settings_are_flags_generated_from_each_parts_options(tmp_path, capsys):
    """--KIND-PART-FIELD sets one part's option; a setting of a part that is not chosen is
    refused with a sentence, before anything is written."""
    common = ["--hidden", "16", "--batch-size", "512", "--no-progress", "--out", str(tmp_path)]
    assert main(["train", "--epochs", "1", "--name", "d", "--decoder-mlp-hidden", "8,12",
                 "--prior", "flow", "--prior-flow-layers", "3", *common]) == 0
    options = json.loads((tmp_path / "d" / "config.json").read_text())["model"]["options"]
    assert options["decoder"] == {"mlp": {"hidden": [8, 12]}}
    assert options["prior"] == {"flow": {"layers": 3}}
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--name", "e", "--prior-vamp-components", "4",
                 *common]) == 2
    err = capsys.readouterr().err
    assert "--prior-vamp-components is a setting of the vamp prior, but the prior is normal" in err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("argv,reason", [
    (["--prior", "vamp", "--guide", "iaf"], "no density in closed form"),
    (["--objective", "iwae"], "with one particle the importance-weighted bound is the plain ELBO"),
])
def test_cli_refuses_impossible_combinations_before_training(tmp_path, capsys, argv, reason):
    code = main(["train", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path), "--no-progress",
                 *argv])
    assert code == 2
    assert reason in capsys.readouterr().err
    assert not list(tmp_path.glob("*/checkpoint.safetensors"))


def test_cli_trains_a_flow_prior_with_an_iaf_guide_and_draws_its_figures(tmp_path):
    """The run folder's figures read q's mean; the IAF posterior provides one."""
    assert main(["train", "--prior", "flow", "--guide", "iaf", "--epochs", "1", "--hidden", "8",
                 "--batch-size", "512", "--out", str(tmp_path), "--name", "r",
                 "--no-progress"]) == 0
    assert (tmp_path / "r" / "latent_map.png").exists()
    assert (tmp_path / "r" / "reconstructions.png").exists()


@pytest.mark.parametrize("name", sorted(STORIES))
def test_every_shipped_story_and_its_guide_match_and_take_a_finite_step(name):
    """The shipped stories (``catalog.STORIES``): the guide proposes every latent site of the
    story, and one step of the story's own objective (``enum`` for m2, else the default) is
    finite with gradient on every parameter; labelled and unlabelled rows alike."""
    cfg = ModelConfig(latent_dim=2, hidden_sizes=(8,), activation="tanh")
    model, q = STORIES.lookup(name)(cfg, 6, classes=3)
    model, q = as_program(model, name), as_program(q, "guide")
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    y = torch.tensor([0, 1, 2, -1, -1]) if getattr(model, "partly_labelled", False) \
        else torch.tensor([0, 1, 2, 0, 1])
    pyro.set_rng_seed(0)
    guide_latent, _ = _sites(poutine.trace(q).get_trace(x, y=y))
    model_latent, observed = _sites(poutine.trace(model).get_trace(x, y=y))
    assert model_latent <= guide_latent and "x" in observed
    objective = build_objective(TrainConfig(objective=default_objective(name) or "elbo"))
    loss = objective.differentiable_loss(model, q, x, beta=1.0, batch={"y": y})
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    params = unique_parameters(model, q)
    assert params and all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params)
