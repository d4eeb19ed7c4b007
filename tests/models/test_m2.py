"""M2, the semi-supervised story: its enumerated ELBO is exact, labels are kept balanced and
seeded, and the engine trains, scores and classifies it from the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_vae.cli import main
from pyro_vae.data.images import UNKNOWN_LABEL
from pyro_vae.data.loading import from_tensor
from pyro_vae.evaluation.classify import (
    accuracy,
    balanced_rows,
    calibration,
    confusion,
    keep_labels,
)
from pyro_vae.guides.encoders import MLPEncoder
from pyro_vae.guides.semisupervised import Classifier, ClassifierGuide
from pyro_vae.models.likelihoods import Bernoulli
from pyro_vae.models.semisupervised import M2
from pyro_vae.programs import as_program


class DeltaHead(nn.Module):
    """q(z | x, y) = δ(μ(h)): makes the enumerated ELBO deterministic, so it can be checked
    against the formula to rounding error."""

    def __init__(self, features: int, latent: int) -> None:
        super().__init__()
        self.loc = nn.Linear(features, latent)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self.loc(h), event_dim=1)


def _tiny_m2(alpha: float = 3.0, k: int = 3, d: int = 6, latent: int = 2):
    torch.manual_seed(0)
    classifier = Classifier(MLPEncoder(d, (5,), "tanh"), k)
    story = M2(nn.Linear(latent + k, d), Bernoulli(), classifier, latent, k, alpha)
    encoder = nn.Sequential(nn.Linear(d + k, 4), nn.Tanh())
    guide = ClassifierGuide(classifier, encoder, DeltaHead(4, latent), k)
    return story, guide


@torch.no_grad()
def _by_hand(story: M2, guide: ClassifierGuide, x: torch.Tensor, y: torch.Tensor) -> float:
    """M2's loss from its definition (Kingma et al. 2014, eqs. 6, 7 and 9), row by row."""
    k = story.classes
    log_q = torch.log_softmax(story.classifier(x), -1)
    total = 0.0
    for n in range(len(x)):
        terms = []
        for c in range(k):
            z = guide.z_dist(x[n:n + 1], torch.tensor([c])).mean                  # δ's value
            log_joint = (math.log(1 / k) + story.x_dist(z, torch.tensor([c])).log_prob(x[n:n + 1])
                         + dist.Normal(0.0, 1.0).log_prob(z).sum(-1))
            terms.append(float(log_joint))
        if y[n] >= 0:
            total += terms[int(y[n])] + story.alpha * float(log_q[n, y[n]])
        else:
            q = log_q[n].exp()
            total += sum(float(q[c]) * (terms[c] - float(log_q[n, c])) for c in range(k))
    return -total


def test_the_enumerated_loss_is_m2s_labelled_and_unlabelled_elbo_exactly():
    """Labelled rows: the labelled ELBO plus α log q(y | x), the point mass leaving no other
    branch; unlabelled rows: Σ_y q(y | x)(log p(x, y, z) − log q(y | x)). With δ guides for
    z the loss is deterministic, so float64 agreement to 1e-8 is exact, not statistical."""
    story, guide = _tiny_m2()
    story, guide = story.double(), guide.double()
    x = torch.bernoulli(torch.full((5, 6), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, UNKNOWN_LABEL, 0, UNKNOWN_LABEL, 1])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        as_program(story, "m2"), as_program(guide, "guide"), x, y=y)
    loss = float(loss.detach())
    assert math.isfinite(loss)
    assert loss == pytest.approx(_by_hand(story, guide, x, y), abs=1e-8)


def test_gradients_are_finite_with_the_impossible_branches_of_a_point_mass():
    story, guide = _tiny_m2()
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        as_program(story, "m2"), as_program(guide, "guide"), x, y=torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grads = [p.grad for p in list(story.parameters()) + list(guide.parameters()) if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_kept_labels_are_balanced_seeded_and_held_out_labels_hidden():
    labels = torch.arange(10).repeat(20)                          # 200 rows, 20 per class
    rows = balanced_rows(labels, 23, seed=4)
    counts = torch.bincount(labels[rows], minlength=10)
    assert len(rows) == 23 and counts.max() - counts.min() <= 1   # 3 classes get one more
    assert torch.equal(rows, balanced_rows(labels, 23, seed=4))
    assert not torch.equal(rows, balanced_rows(labels, 23, seed=5))
    data = keep_labels(from_tensor(torch.rand(200, 4), labels), 10, seed=0)
    seen = data.train.fields()["y"]
    assert int((seen != UNKNOWN_LABEL).sum()) == 10
    assert torch.equal(seen[seen >= 0], data.train.labels[seen >= 0])
    assert bool((data.test.fields()["y"] == UNKNOWN_LABEL).all())
    assert bool((data.val.fields()["y"] == UNKNOWN_LABEL).all())


def test_keeping_more_labels_than_there_are_is_refused_by_name():
    labels = torch.arange(10).repeat(3)
    with pytest.raises(ValueError, match="--labels 31: the training split has 30"):
        balanced_rows(labels, 31, seed=0)
    with pytest.raises(ValueError, match="class 9 has only 1"):
        balanced_rows(torch.cat([torch.arange(9).repeat(5), torch.tensor([9])]), 20, seed=0)


def test_accuracy_confusion_and_calibration_on_known_predictions():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(probs, labels) == 0.75
    assert confusion(probs, labels).tolist() == [[1, 0], [1, 2]]
    cal = calibration(probs, labels, bins=10)
    # bins: 0.9 → hit, 0.6 → miss, 0.7 → hit, 0.8 → hit: |1−.9| + |0−.6| + |1−.7| + |1−.8|
    assert cal.ece == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)
    assert sum(cal.count) == 4


def cli(run, capsys) -> tuple[int, str]:
    """The exit code of ``run()`` and its one line of error output."""
    try:
        code = run()
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1, err
    return code, err[0] if err else ""


def _train(tmp_path, *extra: str) -> int:
    return main(["train", "--model", "m2", "--epochs", "2", "--latent-dim", "2", "--hidden", "16",
                 "--batch-size", "64", "--out", str(tmp_path), "--name", "m2", "--no-progress",
                 *extra])


def test_m2_trains_from_the_command_line_with_accuracy_figures_evaluate_and_sample(tmp_path):
    assert _train(tmp_path, "--labels", "50") == 0
    run = tmp_path / "m2"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0.0 <= line["test_accuracy"] <= 1.0 for line in lines)
    assert json.loads((run / "config.json").read_text())["train"]["objective"] == "enum"
    for png in ("confusion.png", "reliability.png", "reconstructions.png", "prior_samples.png"):
        assert (run / png).stat().st_size > 0
    assert main(["evaluate", str(run), "--samples", "8", "--points", "40", "--no-progress"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert all(math.isfinite(e["mean"]) for e in evaluation["estimates"].values())
    assert evaluation["summed_exactly"] == ["y"]
    assert main(["sample", str(run), "--label", "3", "--n", "4"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--labels", "100000"], "--labels 100000: the training split has"),
    (["--objective", "elbo"], "--objective elbo: the guide marks site 'y' for enumeration; "
                              "train it with --objective enum (the default elbo-auto chooses it)"),
    (["--guide", "auto"], "label site 'y': the story classifies by the guide's q(y | x), and "
                          "this guide has no site 'y' (its latent sites: z); use the story's own"),
])
def test_bad_semi_supervised_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    code, line = cli(lambda: _train(tmp_path, *extra), capsys)
    assert code == 2 and message in line, line
    assert not (tmp_path / "m2").exists()


def test_labels_for_a_story_that_needs_every_label_is_refused(tmp_path, capsys):
    code, line = cli(lambda: main(["train", "--model", "cvae", "--labels", "10", "--epochs", "1",
                                   "--out", str(tmp_path), "--no-progress"]), capsys)
    assert code == 2 and "--labels 10: cvae uses every label" in line, line
    assert not any(tmp_path.iterdir())


def test_m2_on_images_without_labels_is_refused(tmp_path, capsys):
    path = tmp_path / "images.npy"
    np.save(path, (np.random.default_rng(0).random((60, 4, 4)) > 0.5).astype(np.float32))
    code, line = cli(lambda: main(["train", "--model", "m2", "--data", str(path), "--labels", "10",
                                   "--epochs", "1", "--out", str(tmp_path / "runs"),
                                   "--no-progress"]), capsys)
    assert code == 2 and "'y'" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_keeps_the_accuracy_of_its_earlier_epochs(tmp_path):
    """--resume rewrites metrics.jsonl to match the checkpoint; the lines it keeps are whole,
    so the per-epoch accuracy written beside each record survives."""
    assert _train(tmp_path, "--labels", "30") == 0
    assert main(["train", "--resume", str(tmp_path / "m2"), "--epochs", "3", "--no-progress"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "m2" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all("test_accuracy" in line for line in lines)
