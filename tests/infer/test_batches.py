"""Labelled rows in batches of their own (``TrainConfig.labelled_every``, ``--labelled-every``):
which rows each step takes, that a fit interrupted mid-epoch resumes to the uninterrupted fit
bit for bit, that config.json records the cadence, and that settings which cannot work are
refused in one line before a run folder exists."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, StoryConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.evaluation.classify import keep_labels
from pyro_vae.infer.batches import Batches, layout
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.folders import CHECKPOINT, METRICS, load_run_data, resume_run, train_run


def _data(n: int = 50, labels: int = 7):
    x = torch.rand(n, 4)
    return keep_labels(from_tensor(x, torch.arange(n) % 5, DataConfig(val_fraction=0.1,
                                                                      test_fraction=0.1)),
                       labels, seed=0)


def test_the_layout_puts_a_labelled_step_at_every_kth_step_and_ends_with_the_unlabelled_rows():
    assert layout(10, 3, 4, 2) == [4, -3, 4, -3, 2]
    assert layout(10, 30, 4, 3) == [4, -4, 4, 2]        # labelled batches of B when L > B
    # Pyro's cadence ⌊N / labels⌋ at 100 labels of 50,000: one labelled batch, at step 1.
    pyro = layout(49_900, 100, 200, 50_000 // 100)
    assert len(pyro) == 251 and [s for s in pyro if s < 0] == [-100] and pyro[1] == -100


def test_an_epoch_takes_every_unlabelled_row_once_and_labelled_rows_only_in_labelled_steps():
    data = _data()
    known = data.train.known
    batches = Batches(TrainConfig(batch_size=6, labelled_every=3), data)
    perm = batches.permutation(torch.Generator().manual_seed(0), torch.device("cpu"))
    steps = [batches.rows(perm, s) for s in range(batches.steps)]
    unlabelled = torch.cat([rows for i, rows in enumerate(steps) if i % 3 != 1])
    labelled = torch.cat([rows for i, rows in enumerate(steps) if i % 3 == 1])
    assert sorted(unlabelled.tolist()) == torch.nonzero(~known).flatten().tolist()
    assert bool(known[labelled].all()) and not bool(known[unlabelled].any())
    assert all(len(rows) == 6 for rows in steps[1::3])               # min(B, 7 labels)
    assert batches.labelled_steps == len(steps[1::3]) > 2            # the labels come back
    # Each pass over the labelled rows takes each of them once.
    first = labelled[:int(known.sum())]
    assert sorted(first.tolist()) == torch.nonzero(known).flatten().tolist()


def test_without_a_cadence_the_epoch_is_the_shuffled_permutation_as_before():
    data = _data()
    batches = Batches(TrainConfig(batch_size=8), data)
    perm = batches.permutation(torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(perm, torch.randperm(len(data.train), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(batches.rows(perm, 1), perm[8:16]) and batches.labelled_steps == 0


def _m2(epochs: int) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)),
                     data=DataConfig(labels=40),
                     train=TrainConfig(epochs=epochs, batch_size=128, objective="enum",
                                       labelled_every=3, device="cpu"),
                     story=StoryConfig(model="m2", guide="story"))


def _lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def test_a_fit_with_labelled_batches_stopped_mid_epoch_resumes_to_the_uninterrupted_fit(tmp_path):
    """M2 on the digits, 40 labels, a labelled batch every 3rd step (17 steps an epoch):
    stopped at step 5 of epoch 2 (a labelled step is next), checkpointed, resumed; every
    epoch's ELBOs, accuracies and every parameter equal the fit that never stopped."""
    cfg = _m2(3)
    train_run(cfg, tmp_path, "whole", progress=False)
    steps = Batches(cfg.train, load_run_data(cfg)).steps
    polls = iter(range(10 ** 6))
    first = train_run(cfg, tmp_path, "r", progress=False, stop=lambda: next(polls) == steps + 4)
    assert first.fit.interrupted and (first.fit.state.epoch, first.fit.state.step) == (1, 4)
    assert len(load_checkpoint(tmp_path / "r" / CHECKPOINT).state.perm) > 1437  # labels repeat
    resume_run(tmp_path / "r", progress=False)
    timing = ("seconds", "images_per_second")
    strip = lambda lines: [{k: v for k, v in e.items() if k not in timing} for e in lines]  # noqa: E731
    assert strip(_lines(tmp_path / "r")) == strip(_lines(tmp_path / "whole"))
    saved, reference = (load_checkpoint(tmp_path / n / CHECKPOINT).modules for n in ("r", "whole"))
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert recorded["labelled_every"] == 3


def test_a_resume_keeps_the_cadence_and_refuses_to_change_it(tmp_path, capsys):
    train_run(_m2(1), tmp_path, "r", progress=False)
    with pytest.raises(ValueError, match="labelled_every cannot change"):
        resume_run(tmp_path / "r", 2, changes={"labelled_every": 5}, progress=False)
    assert main(["train", "--resume", str(tmp_path / "r"), "--labelled-every", "5",
                 "--no-progress"]) == 2
    assert "--labelled-every cannot change" in capsys.readouterr().err


def _cli(tmp_path, *extra: str) -> list[str]:
    return ["train", "--epochs", "1", "--latent-dim", "2", "--hidden", "8", "--out",
            str(tmp_path), "--name", "r", "--no-progress", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--model", "m2", "--labels", "40", "--labelled-every", "1"],
     "labelled_every (--labelled-every) must be an integer of at least 2"),
    (["--model", "m2", "--labelled-every", "4"],
     "--labelled-every 4: the story sees every training label"),
    (["--labelled-every", "4"], "--labelled-every 4: the story sees every training label"),
])
def test_a_cadence_that_cannot_work_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    code = main(_cli(tmp_path, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_cadence_given_in_python_is_checked_as_the_flag_is(tmp_path):
    cfg = _m2(1)
    with pytest.raises(ValueError, match="at least 2"):
        train_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, labelled_every=0)),
                  tmp_path, "r", progress=False)
    assert not (tmp_path / "r").exists()
