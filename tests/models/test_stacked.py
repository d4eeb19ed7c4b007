"""M1 + M2 (``--model m1m2``): its enumerated loss is the stacked ELBO exactly, and a fit
started from a VAE run holds that run's networks fixed, is self-contained and refuses a run
of other parts in one line."""

from __future__ import annotations

import json
import math
import shutil

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_vae.cli import main
from pyro_vae.data.images import UNKNOWN_LABEL
from pyro_vae.guides import (
    AmortizedGuide,
    Classifier,
    ClassifierGuide,
    DiagonalNormalHead,
    MeanCode,
    MLPEncoder,
    StackedGuide,
)
from pyro_vae.models import M2, Bernoulli, GaussianCode, StackedM2
from pyro_vae.programs import as_program
from pyro_vae.runs import load_checkpoint
from pyro_vae.weights import freeze

from test_m2 import DeltaHead, cli  # noqa: I001 (a sibling test module)


def _tiny(alpha: float = 2.0, k: int = 3, d: int = 6, z1: int = 3, z2: int = 2,
          head: type[nn.Module] = DeltaHead, draws: bool = False,
          keep: tuple[int, ...] | None = None):
    """A stacked story with δ guides for z1 and z2 (``head`` for z1), so that its loss is
    deterministic; M2 reads the ``keep`` dimensions of z1 (all by default)."""
    torch.manual_seed(0)
    m1 = AmortizedGuide(nn.Sequential(nn.Linear(d, 4), nn.Tanh()), head(4, z1))
    code, kept = MeanCode(m1, keep), z1 if keep is None else len(keep)
    classifier = Classifier(MLPEncoder(kept, (5,), "tanh"), k)
    m2 = M2(nn.Linear(z2 + k, 2 * kept), GaussianCode(keep=keep, dim=z1), classifier, z2, k,
            alpha)
    story = StackedM2(m2, nn.Linear(z1, d), Bernoulli(), code, draws)
    guide = StackedGuide(m1, ClassifierGuide(classifier, nn.Sequential(nn.Linear(kept + k, 4),
                                                                        nn.Tanh()),
                                             DeltaHead(4, z2), k), code, draws)
    return story.double(), guide.double()


@torch.no_grad()
def _by_hand(story: StackedM2, guide: StackedGuide, x: torch.Tensor, y: torch.Tensor,
             keep: tuple[int, ...] | None = None) -> float:
    """The stacked ELBO from the story's definition, row by row: with δ guides,
    log p(y) + log p(z2) + log p(z1 | z2, y) + log p(x | z1) at the guide's points, weighed
    by q(y | code(x)) on unlabelled rows (less its log), plus α log q(y | code(x)) on
    labelled rows. M2 reads z1's ``keep`` dimensions."""
    k, total = story.classes, 0.0
    for n in range(len(x)):
        xn = x[n:n + 1]
        z1 = guide.m1.z_dist(xn).mean
        read = z1 if keep is None else z1[:, list(keep)]
        log_q = torch.log_softmax(story.m2.classifier(read), -1)[0]  # code(x) is z1 under δ
        terms = []
        for c in range(k):
            label = torch.tensor([c])
            z2 = guide.m2.z_dist(read, label).mean
            terms.append(float(math.log(1 / k) + dist.Normal(0.0, 1.0).log_prob(z2).sum()
                               + story.m2.x_dist(z2, label).log_prob(z1).sum()
                               + story.x_dist(z1).log_prob(xn).sum()))
        if y[n] >= 0:
            total += terms[int(y[n])] + story.m2.alpha * float(log_q[y[n]])
        else:
            q = log_q.exp()
            total += sum(float(q[c]) * (terms[c] - float(log_q[c])) for c in range(k))
    return -total


@pytest.mark.parametrize("keep", [None, (0, 2)])
def test_the_enumerated_loss_is_the_stacked_elbo_exactly(keep):
    """δ guides make the loss deterministic, so float64 agreement to 1e-8 is exact."""
    story, guide = _tiny(keep=keep)
    x = torch.bernoulli(torch.full((5, 6), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, UNKNOWN_LABEL, 0, UNKNOWN_LABEL, 1])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        as_program(story, "m1m2"), as_program(guide, "guide"), x, y=y)
    assert float(loss.detach()) == pytest.approx(_by_hand(story, guide, x, y, keep), abs=1e-8)


def test_a_code_of_kept_dimensions_leaves_the_others_at_m1_s_prior():
    """GaussianCode with keep: N(loc, σ²) on the kept dimensions, N(0, 1) on the rest."""
    h = torch.tensor([[0.5, -1.0, 0.3, 2.0]], dtype=torch.float64)  # loc (0.5, -1), raw σ
    z = torch.tensor([[0.1, 0.7, -0.4, 1.2]], dtype=torch.float64)
    scale = torch.nn.functional.softplus(h[0, 2:]) + 1e-3
    expected = (dist.Normal(h[0, :2], scale).log_prob(z[0, [3, 1]]).sum()
                + dist.Normal(0.0, 1.0).log_prob(z[0, [0, 2]]).sum())
    got = GaussianCode(keep=(3, 1), dim=4)(h).log_prob(z)
    assert got.shape == (1,) and float(got) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("draws", [False, True])
def test_the_classifier_reads_the_drawn_code_only_with_draws(draws):
    """Under a Normal q(z1 | x), the guide's q(y | ·) and the story's auxiliary term read the
    drawn z1 with ``draws`` and the mean of q(z1 | x) without; classify reads the mean."""
    story, guide = _tiny(head=DiagonalNormalHead, draws=draws)
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, UNKNOWN_LABEL, 0, 2])
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(story, guide_trace)).get_trace(x, y)
        z1, mean = guide_trace.nodes["z1"]["value"], guide.m1.z_dist(x).mean
        assert not torch.allclose(z1, mean)  # the check below can tell them apart
        features = z1 if draws else mean
        expected = torch.log_softmax(story.m2.classifier(features), -1)
        unlabelled = guide_trace.nodes["y"]["fn"].logits[1]
        assert torch.allclose(torch.log_softmax(unlabelled, -1), expected[1])
        aux = model_trace.nodes["y_aux"]["fn"]
        assert torch.allclose(torch.log_softmax(aux.logits, -1), expected)
        assert torch.allclose(story.classify(x), story.m2.classifier(mean))
        drawn = story.train_logits(x)
    # train_logits is what the fit's classifier sees: a fresh draw, or the mean's logits.
    assert torch.allclose(drawn, story.classify(x)) is not draws


def test_freeze_turns_parameters_into_buffers_that_the_state_dict_keeps():
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    freeze(net)
    assert list(net.parameters()) == []
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert net(torch.ones(4, 3)).shape == (4, 1)


SIZES = ["--data", "digits", "--latent-dim", "3", "--hidden", "16", "--batch-size", "64",
         "--no-progress"]


def _m1(tmp_path) -> None:
    assert main(["train", *SIZES, "--epochs", "2", "--out", str(tmp_path), "--name", "m1"]) == 0


def _stacked(tmp_path, *extra: str, name: str = "st") -> int:
    return main(["train", *SIZES, "--model", "m1m2", "--labels", "40", "--epochs", "2",
                 "--model-arg", "width=8", "--model-arg", "z2=2", "--out", str(tmp_path),
                 "--name", name, *extra])


def _m1_part(modules: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)}


def test_a_fit_from_a_vae_run_holds_its_networks_fixed_and_needs_it_no_more(tmp_path):
    _m1(tmp_path)
    assert _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}") == 0
    fitted = load_checkpoint(tmp_path / "m1" / "best.safetensors").modules
    stacked = load_checkpoint(tmp_path / "st" / "checkpoint.safetensors").modules
    for theirs, ours in (("model.story.decoder.", "model.story.decoder."),
                         ("guide.story.", "guide.story.m1.")):
        a, b = _m1_part(fitted, theirs), _m1_part(stacked, ours)
        assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(s) for s in (tmp_path / "st" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= line["test_accuracy"] <= 1.0 for line in lines)
    # The run folder holds M1's networks itself: it resumes and evaluates without M1's run.
    shutil.rmtree(tmp_path / "m1")
    assert main(["train", "--resume", str(tmp_path / "st"), "--epochs", "3", "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "st"), "--samples", "4", "--points", "30",
                 "--no-progress"]) == 0
    estimates = json.loads((tmp_path / "st" / "evaluation.json").read_text())["estimates"]
    assert all(math.isfinite(e["mean"]) for e in estimates.values())
    resumed = load_checkpoint(tmp_path / "st" / "checkpoint.safetensors").modules
    assert all(torch.equal(stacked[k], resumed[k]) for k in stacked if ".m1." in k)


def test_a_fit_whose_classifier_reads_draws_is_evaluated_with_particles_at_once(tmp_path):
    """With ``draws`` the classifier reads the drawn code, which a vectorized estimate draws
    ``[S, N, d]``: q(y | ·) and its point masses on the labelled rows take those leading
    dimensions (the evaluation stopped on a shape error before they did)."""
    _m1(tmp_path)
    assert _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}",
                    "--model-arg", "draws=True") == 0
    assert main(["evaluate", str(tmp_path / "st"), "--samples", "8", "--points", "30",
                 "--no-progress"]) == 0
    estimates = json.loads((tmp_path / "st" / "evaluation.json").read_text())["estimates"]
    assert all(math.isfinite(e["mean"]) for e in estimates.values())


def test_freeze_m1_false_fits_m1_further(tmp_path):
    _m1(tmp_path)
    assert _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}",
                    "--model-arg", "freeze_m1=False") == 0
    fitted = _m1_part(load_checkpoint(tmp_path / "m1" / "best.safetensors").modules,
                      "guide.story.")
    stacked = _m1_part(load_checkpoint(tmp_path / "st" / "checkpoint.safetensors").modules,
                       "guide.story.m1.")
    assert any(not torch.equal(fitted[k], stacked[k]) for k in fitted)


@pytest.mark.parametrize("extra, message", [
    (["--latent-dim", "4"], "was fitted with latent_dim 3 (this run: 4): give this run the "
                            "same model flags"),
    (["--activation", "tanh"], "was fitted with activation 'relu' (this run: 'tanh')"),
    (["--guide", "iaf"], "was fitted with guide 'diagonal' (this run: 'iaf')"),
])
def test_an_m1_run_of_other_parts_is_refused_in_one_line(tmp_path, capsys, extra, message):
    _m1(tmp_path)
    capsys.readouterr()
    code, line = cli(lambda: _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}", *extra),
                     capsys)
    assert code == 2 and message in line, line
    assert not (tmp_path / "st").exists()


def test_a_missing_m1_and_an_m1_of_a_story_are_refused_in_one_line(tmp_path, capsys):
    code, line = cli(lambda: _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'none'}"), capsys)
    assert code == 2 and "no such run folder or checkpoint file" in line, line
    _m1(tmp_path)
    assert _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}") == 0
    capsys.readouterr()
    code, line = cli(lambda: _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'st'}",
                                      name="again"), capsys)
    assert code == 2 and "a run of the story 'm1m2'; m1 must be a run of the built-in VAE" in line


@pytest.mark.parametrize("arg, message", [
    ("z2=0", "--model-arg z2=0: m1m2 needs a positive whole number"),
    ("width=-1", "--model-arg width=-1: m1m2 needs a positive whole number"),
    ("z2=2.5", "--model-arg z2=2.5: m1m2 needs a positive whole number"),
    ("freeze_m1=3", "--model-arg freeze_m1=3: True or False"),
    ("draws=1", "--model-arg draws=1: True or False"),
    ("keep=(0,3)", "--model-arg keep=(0, 3): m1m2 needs distinct indices of z1 (0 to 2)"),
    ("keep=(1,1)", "--model-arg keep=(1, 1): m1m2 needs distinct indices of z1"),
    ("keep=()", "--model-arg keep=(): m1m2 needs distinct indices of z1"),
])
def test_bad_settings_of_the_stacked_story_are_one_line(tmp_path, capsys, arg, message):
    code, line = cli(lambda: _stacked(tmp_path, "--model-arg", arg), capsys)
    assert code == 2 and message in line, line
    assert not (tmp_path / "st").exists()


def test_a_fit_on_draws_of_kept_dimensions_resumes_from_its_config(tmp_path):
    """keep and draws go through --model-arg into config.json (a tuple comes back as a JSON
    list) and the resumed run rebuilds the same networks."""
    _m1(tmp_path)
    assert _stacked(tmp_path, "--model-arg", f"m1={tmp_path / 'm1'}", "--model-arg",
                    "keep=(0,2)", "--model-arg", "draws=True") == 0
    args = json.loads((tmp_path / "st" / "config.json").read_text())["story"]["args"]
    assert list(args["keep"]) == [0, 2] and args["draws"] is True
    modules = load_checkpoint(tmp_path / "st" / "checkpoint.safetensors").modules
    assert modules["guide.story.m2.classifier.encoder.net.0.weight"].shape[1] == 2
    assert main(["train", "--resume", str(tmp_path / "st"), "--epochs", "3", "--no-progress"]) == 0
    lines = (tmp_path / "st" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
