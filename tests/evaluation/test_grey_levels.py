"""``--binarize grey``: a Bernoulli likelihood scores the grey levels by their cross-entropy,
as Pyro's ss-VAE example does. The option is explicit and recorded in config.json, and
``evaluate`` refuses to call the number log p(x)."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import DataConfig
from pyro_vae.data import GREY, load_data
from pyro_vae.evaluation import evaluate
from pyro_vae.models.likelihoods import Bernoulli
from pyro_vae.runs.folders import load_run
from pyro_vae.validation import DataError


def test_grey_keeps_the_grey_levels_in_training_batches_and_held_out_splits():
    data = load_data(DataConfig(binarize=GREY))
    grey = data.test.x
    assert data.binarize == GREY and bool(((grey > 0) & (grey < 1)).any())
    assert torch.equal(data.eval_split("test", seed=3), grey)
    x, _ = data.train_batch(torch.arange(5))
    assert torch.equal(x, data.train.x[:5])


def test_the_bernoulli_scores_grey_levels_by_their_cross_entropy():
    logits, x = torch.linspace(-4, 4, 9), torch.linspace(0, 1, 9)
    p = torch.sigmoid(logits.double())
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum()
    assert float(Bernoulli()(logits).log_prob(x)) == pytest.approx(float(by_hand), abs=1e-5)


def _train(tmp_path, *extra: str) -> int:
    return main(["train", "--epochs", "1", "--latent-dim", "2", "--hidden", "8", "--out",
                 str(tmp_path), "--name", "g", "--no-progress", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("story", [[], ["--model", "m2", "--labels", "30"]])
def test_a_grey_run_is_recorded_and_evaluate_refuses_to_call_its_number_log_px(tmp_path, capsys,
                                                                                story):
    assert _train(tmp_path, "--binarize", "grey", *story) == 0
    run = tmp_path / "g"
    assert json.loads((run / "config.json").read_text())["data"]["binarize"] == "grey"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--samples", "4", "--points", "4", "--no-progress"]) == 2
    line = _one_line(capsys)
    assert "--binarize grey" in line and "not a log-likelihood" in line and "log p(x)" in line
    assert not (run / "evaluation.json").exists()
    # From Python, the grey test images are refused too (a Bernoulli cannot score them).
    loaded = load_run(run)
    with pytest.raises(DataError, match="values other than 0 and 1"):
        evaluate(loaded.model, loaded.guide, loaded.data.eval_split("test")[:4], num_samples=4,
                 batch={k: v[:4] for k, v in loaded.data.test.fields().items()})


def test_grey_with_a_likelihood_that_is_not_a_bernoulli_is_refused(tmp_path, capsys):
    assert _train(tmp_path, "--binarize", "grey", "--likelihood", "gaussian") == 2
    assert "--binarize grey scores grey levels with a Bernoulli" in _one_line(capsys)
    assert not (tmp_path / "g").exists()
