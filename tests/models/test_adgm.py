"""The auxiliary deep generative model (``--model adgm``): its enumerated loss is the ADGM's
labelled and unlabelled bound exactly, its classifier is the mixture over a, and the engine
trains, scores, classifies and samples it from the command line."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_vae.cli import main
from pyro_vae.data.images import UNKNOWN_LABEL
from pyro_vae.evaluation.classify import LABEL_DRAWS, label_probs
from pyro_vae.guides.amortized import AmortizedGuide, DiagonalNormalHead
from pyro_vae.guides.encoders import MLPEncoder
from pyro_vae.guides.semisupervised import AuxiliaryGuide, Classifier, ClassifierGuide
from pyro_vae.models.likelihoods import Bernoulli
from pyro_vae.models.semisupervised import M2, AuxiliaryM2, GaussianCode
from pyro_vae.programs import as_program

from test_m2 import DeltaHead, cli  # noqa: I001 (a sibling test module)

D, K, LATENT, A = 6, 3, 2, 2


class DeltaPosterior(nn.Module):
    """q(a | x) = δ(μ(x)): with it and δ heads for z the enumerated loss is deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Linear(D, A)

    def z_dist(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self.loc(x), event_dim=1)


def _tiny(alpha: float = 3.0) -> tuple[AuxiliaryM2, AuxiliaryGuide]:
    torch.manual_seed(0)
    classifier = Classifier(MLPEncoder(D + A, (5,), "tanh"), K)
    m2 = M2(nn.Linear(LATENT + K, D), Bernoulli(), classifier, LATENT, K, alpha)
    p_a = nn.Sequential(nn.Linear(D + LATENT + K, 2 * A), GaussianCode())
    posterior = DeltaPosterior()
    encoder = nn.Sequential(nn.Linear(D + A + K, 4), nn.Tanh())
    guide = AuxiliaryGuide(posterior, ClassifierGuide(classifier, encoder, DeltaHead(4, LATENT), K))
    return AuxiliaryM2(m2, p_a, posterior), guide


@torch.no_grad()
def _by_hand(story: AuxiliaryM2, guide: AuxiliaryGuide, x: torch.Tensor, y: torch.Tensor) -> float:
    """The ADGM's loss from its definition (Maaløe et al. 2016, eqs. 14 and 15 with M2's
    α-term), row by row: a = μ(x) (δ, so log q(a | x) = 0); for each y = c, z_c = μ(x, a, c)
    and log p(y, z, x, a) = log 1/K + log N(z_c; 0, I) + log p(x | z_c, c) + log p(a | x, z_c, c)."""
    total = 0.0
    for n in range(len(x)):
        row = x[n:n + 1]
        a = guide.posterior.loc(row)
        features = torch.cat([row, a], -1)
        log_q = torch.log_softmax(story.m2.classifier(features), -1)[0]
        terms = []
        for c in range(K):
            label = torch.tensor([c])
            z = guide.m2.z_dist(features, label).mean
            terms.append(float(math.log(1 / K) + dist.Normal(0.0, 1.0).log_prob(z).sum()
                               + story.m2.x_dist(z, label).log_prob(row).sum()
                               + story.a_dist(row, z, label).log_prob(a).sum()))
        if y[n] >= 0:
            total += terms[int(y[n])] + story.m2.alpha * float(log_q[y[n]])
        else:
            q = log_q.exp()
            total += sum(float(q[c]) * (terms[c] - float(log_q[c])) for c in range(K))
    return -total


def test_the_enumerated_loss_is_the_adgm_bound_exactly():
    """With δ guides for a and z the loss is deterministic, so float64 agreement to 1e-8 is
    exact: a enters the model through p(a | x, z, y) in every branch of y, and the
    classifier's q(y | a, x) weighs the unlabelled branches and gives the α-term."""
    story, guide = _tiny()
    story, guide = story.double(), guide.double()
    x = torch.bernoulli(torch.full((5, D), 0.4, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, UNKNOWN_LABEL, 0, UNKNOWN_LABEL, 1])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        as_program(story, "adgm"), as_program(guide, "guide"), x, y=y)
    assert float(loss.detach()) == pytest.approx(_by_hand(story, guide, x, y), abs=1e-8)


def test_the_label_probabilities_are_the_mixture_over_draws_of_a():
    """q(y | x) = E_q(a | x)[q(y | a, x)]: the engine reads the guide's site y over
    LABEL_DRAWS traces, each with its own draw of a. Its figure is the mean of the
    classifier's q(y | a, x) at exactly the inputs [x, a] those traces gave it."""
    torch.manual_seed(0)
    classifier = Classifier(MLPEncoder(D + A, (5,), "tanh"), K)
    posterior = AmortizedGuide(MLPEncoder(D, (4,), "tanh"), DiagonalNormalHead(4, A))
    guide = AuxiliaryGuide(posterior, ClassifierGuide(
        classifier, nn.Sequential(nn.Linear(D + A + K, 4), nn.Tanh()), DeltaHead(4, LATENT), K))
    seen: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x = torch.bernoulli(torch.full((7, D), 0.5), generator=torch.Generator().manual_seed(2))
    pyro.set_rng_seed(3)
    probs = label_probs(as_program(guide, "guide"), x, {"y": torch.full((7,), UNKNOWN_LABEL)}, "y")
    hook.remove()
    assert len(seen) == LABEL_DRAWS and all(torch.equal(s[:, :D], x) for s in seen)
    assert len({tuple(s[0, D:].tolist()) for s in seen}) == LABEL_DRAWS  # a drawn afresh
    with torch.no_grad():
        by_hand = torch.stack([torch.softmax(classifier(s), -1) for s in seen]).mean(0)
    assert torch.allclose(probs, by_hand, atol=1e-6)
    assert not torch.allclose(probs, torch.softmax(classifier(seen[0]), -1), atol=1e-3)


def _train(tmp_path, *extra: str) -> int:
    return main(["train", "--model", "adgm", "--epochs", "2", "--latent-dim", "2", "--hidden",
                 "16", "--batch-size", "64", "--labels", "40", "--out", str(tmp_path), "--name",
                 "adgm", "--no-progress", *extra])


def test_adgm_trains_from_the_command_line_and_is_scored_classified_and_sampled(tmp_path):
    assert _train(tmp_path, "--model-arg", "aux=3") == 0
    run = tmp_path / "adgm"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0.0 <= line["test_accuracy"] <= 1.0 for line in lines)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"] == "enum" and config["story"]["args"]["aux"] == 3
    assert (run / "confusion.png").stat().st_size > 0
    assert main(["evaluate", str(run), "--samples", "8", "--points", "40", "--no-progress"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert all(math.isfinite(e["mean"]) for e in evaluation["estimates"].values())
    assert evaluation["summed_exactly"] == ["y"]
    assert main(["sample", str(run), "--label", "1", "--n", "4"]) == 0


@pytest.mark.parametrize("value", ["0", "2.5", "True"])
def test_a_bad_auxiliary_size_is_one_line_and_writes_nothing(tmp_path, capsys, value):
    code, line = cli(lambda: _train(tmp_path, "--model-arg", f"aux={value}"), capsys)
    assert code == 2 and f"--model-arg aux={value}" in line and "adgm needs a positive whole" \
        in line, line
    assert not (tmp_path / "adgm").exists()
