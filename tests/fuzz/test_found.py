"""Each failure the fuzzing found, as a plain test of the input that found it (shrunk by
hand to what matters), so that it stays fixed whatever the generators draw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support import run_cli, train_tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("found"), "tiny", "--latent-dim", "2")


def _one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pyro-vae {command}: error: "), err
    return lines[0]


def test_evaluate_with_one_draw_per_image(run, capsys):
    """``evaluate --samples 1`` was a traceback: ArviZ's PSIS indexes the (M + 1)-th largest
    of K weights, which one weight does not have (IndexError). One draw is all equal to
    itself: k̂ = −∞, ESS = 1, and IWAE = ELBO."""
    code, err = run_cli(["evaluate", str(run), "--samples", "1", "--points", "5",
                         "--no-progress"], capsys)
    assert code == 0, err
    out = json.loads((run / "evaluation.json").read_text())
    assert out["psis"]["khat_max"] == -1.0 and out["psis"]["ess_fraction_mean"] == 1.0
    assert out["estimates"]["iwae"]["mean"] == pytest.approx(out["estimates"]["elbo"]["mean"])


STORY = '''
import pyro
import pyro.distributions as dist
import torch


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        logits = z @ torch.ones(2, x.shape[1])  # a Categorical over the pixels, not per pixel
        pyro.sample("x", dist.Categorical(logits=logits).to_event(1), obs=x)
'''


def test_a_story_whose_observed_distribution_does_not_fit_x(tmp_path, capsys):
    """A story scoring x with a distribution of another support and shape (a shipped story's
    Bernoulli replaced by a Categorical over the decoder's outputs) was a traceback in the
    fit's first step (RuntimeError from broadcasting); the story check now scores its trace
    once, so it is refused before anything is written."""
    story = tmp_path / "story.py"
    story.write_text(STORY)
    code, err = run_cli(["train", "--model", f"{story}:model", "--epochs", "1", "--hidden", "8",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "runs")],
                        capsys)
    line = _one_line(err, "train")
    assert code == 2 and f"{story}" in line and "running the story on" in line, line
    assert not (tmp_path / "runs").exists()


def test_an_evaluation_json_that_is_not_an_object(run, capsys):
    """``evaluation.json`` holding valid JSON that is not an object (``0``) was a TypeError
    (``"entries" in 0``); it is refused like unreadable JSON, and left as it is."""
    (run / "evaluation.json").write_text("0")
    code, err = run_cli(["evaluate", str(run), "--samples", "4", "--points", "4",
                         "--no-progress"], capsys)
    assert code == 2 and "is not an evaluation.json" in _one_line(err, "evaluate")
    assert (run / "evaluation.json").read_text() == "0"
    (run / "evaluation.json").unlink()


@pytest.mark.parametrize("content, reason", [(b"", "read_file: Expected a non empty file"),
                                             (b"\x89PNG\r\n\x1a\n" + bytes(20), "decode_png")])
def test_an_image_folder_with_an_empty_or_broken_file(tmp_path, capsys, content, reason):
    """A folder of PNGs with one empty or corrupt file was a RuntimeError from torchvision's
    decoder; it is one line naming the file."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)).save(folder / f"{i:02d}.png")
    (folder / "05.png").write_bytes(content)
    code, err = run_cli(["train", "--data", str(folder), "--epochs", "1", "--hidden", "8",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "runs")], capsys)
    line = _one_line(err, "train")
    assert code == 2 and f"{folder / '05.png'} cannot be read as an image" in line and reason in line
    assert not (tmp_path / "runs").exists()


def test_labels_of_a_dtype_torch_cannot_hold(tmp_path, capsys):
    """Labels saved as datetime64 were a TypeError where the story is first run on two of
    them (before the data were checked); the labels are now checked first."""
    path = tmp_path / "dated.npz"
    np.savez(path, x=(np.random.default_rng(0).random((40, 4, 4)) > 0.5).astype(np.float32),
             labels=np.arange(40).astype("datetime64[s]"))
    code, err = run_cli(["train", "--data", str(path), "--epochs", "1", "--hidden", "8",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "runs")], capsys)
    line = _one_line(err, "train")
    assert code == 2 and "dated.npz labels: expected integer class labels, got dtype datetime64[s]" in line


HIERARCHICAL_DIRICHLET = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Story(nn.Module):
    def __init__(self, data_dim):
        super().__init__()
        self.decoder = nn.Linear(8, data_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            # a Dirichlet over 8 where a Normal of event 8 was: its batch shape is [N, 8]
            z = pyro.sample("z", dist.Dirichlet(torch.ones(x.shape[0], 8, 8)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)
'''


def test_a_shape_error_that_eight_rows_hide(tmp_path, capsys):
    """A story whose shapes broke only when the rows were not 8 (a latent of 8 values where
    the plate wanted one per row) passed the story check, run on 8 rows, and failed in the
    first step with Pyro's shape error and its table of trace shapes (several lines). The
    check now runs on 7 rows too, the distribution scoring x must have x's shape, and an
    error prints its first line only."""
    story = tmp_path / "story.py"
    story.write_text(HIERARCHICAL_DIRICHLET)
    code, err = run_cli(["train", "--model", f"{story}:Story", "--epochs", "1", "--hidden", "8",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "runs")],
                        capsys)
    line = _one_line(err, "train")
    assert code == 2 and str(story) in line, line
    assert not (tmp_path / "runs").exists()


def test_diagnose_with_fewer_draws_than_split_rhat_needs(run, capsys):
    """``diagnose --samples 1`` (2, 3) was an AssertionError inside Pyro's split R-hat, after
    the run had loaded and the partial folder was made; now one line before anything."""
    code, err = run_cli(["diagnose", str(run), "--samples", "3", "--points", "2", "--out",
                         str(run / "diag")], capsys)
    assert code == 2 and "--samples 3" in _one_line(err, "diagnose") and "at least 4" in err
    assert not (run / "diag").exists()


@pytest.mark.parametrize("command", [["sample", "--n", "2"], ["explore"]])
def test_an_out_that_names_a_folder(run, capsys, command):
    """``sample RUN --out RUN`` and ``explore RUN --out RUN`` were a traceback (the rename of
    the temporary file onto a folder, naming the temporary file); now one line naming the
    folder, and nothing left beside it."""
    before = sorted(p.name for p in run.parent.iterdir())
    code, err = run_cli([command[0], str(run), *command[1:], "--out", str(run)], capsys)
    line = _one_line(err, command[0])
    assert code == 2 and f"cannot write {run}: it is a folder" in line, err
    assert sorted(p.name for p in run.parent.iterdir()) == before


@pytest.mark.parametrize("command", [["sample", "--n", "2"], ["explore"]])
@pytest.mark.parametrize("record", ["config.json", "checkpoint.safetensors", "metrics.jsonl",
                                    "evaluation.partial/chunk.json"])
def test_an_out_that_names_a_record_of_the_run(run, capsys, command, record):
    """``explore RUN --out RUN/config.json`` exited 0 having written the page over the run's
    config, so the folder no longer loaded (found by the CLI fuzzing, which loads the folder
    after each command). Now one line naming the file, and every file as it was."""
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = run_cli([command[0], str(run), *command[1:], "--out", str(run / record)],
                        capsys)
    line = _one_line(err, command[0])
    assert code == 2 and f"{(run / record).resolve()}: that is a record" in line, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_out_beside_the_records_is_still_written(run, capsys):
    """The guard refuses only the run's records: a new file in the run folder is written."""
    code, err = run_cli(["sample", str(run), "--n", "2", "--out", str(run / "mine.png")], capsys)
    assert code == 0 and (run / "mine.png").stat().st_size > 0, err


def test_images_that_are_one_number(tmp_path, capsys):
    """An .npz whose x is a 0-d array (one number, with labels) was a TypeError (``len()`` of
    an unsized object) before the images' shape was checked; now one line naming the shape."""
    data = tmp_path / "data.npz"
    np.savez(data, x=np.array(7, dtype=np.int32), y=np.array([1.0], dtype=np.float16))
    code, err = run_cli(["train", "--data", str(data), "--epochs", "1", "--hidden", "8",
                         "--no-progress", "--out", str(tmp_path / "runs")], capsys)
    line = _one_line(err, "train")
    assert code == 2 and "expected shape [N, D], [N, H, W] or [N, C, H, W], got []" in line
    assert not (tmp_path / "runs").exists()


def test_streamed_rows_pass_the_rank_check():
    """That check (``check_image_rank``) first read ``x.ndim``, which rows streamed from disk do
    not have: every ``--stream on`` run failed (the rerun of the fuzzing found it)."""
    from pyro_vae.validation import check_image_rank

    class Rows:  # what data.streams' NpyRows and FolderRows offer: a shape, no ndim
        shape = (5, 8, 8)

    check_image_rank(Rows(), "rows")
    with pytest.raises(ValueError, match=r"got \[5\]"):
        check_image_rank(type("Flat", (), {"shape": (5,)})(), "rows")


SUPPORT_PER_ROW = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Story(nn.Module):
    def __init__(self, data_dim):
        super().__init__()
        self.net = nn.Linear(data_dim, 2)
        self.decoder = nn.Linear(2, data_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            low = self.net(x)  # the bounds of z's support come from the row
            z = pyro.sample("z", dist.Uniform(low, low + 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)
'''


def test_a_latent_whose_support_moves_with_the_row(tmp_path, capsys):
    """A story whose latent is Uniform(low, high) with bounds computed from x (the fuzzing's
    "wrong support" mutation of quadrants.py) passed the story check, and the automatic guide
    mapped onto the bounds of the rows it was built on: a traceback in the fit's first step.
    Now the guide refuses it in one line, before the run folder is made."""
    story = tmp_path / "story.py"
    story.write_text(SUPPORT_PER_ROW)
    code, err = run_cli(["train", "--model", f"{story}:Story", "--epochs", "1", "--device",
                         "cpu", "--no-progress", "--out", str(tmp_path / "runs")], capsys)
    line = _one_line(err, "train")
    assert code == 2 and "latent site 'z': its support's bounds are numbers per row" in line
    assert not (tmp_path / "runs").exists()


def test_sample_at_a_z_the_decoder_cannot_draw_from(run, capsys):
    """``sample --z 6.6e15,1e308`` made the decoder's probabilities NaN and torch.bernoulli
    raised (a traceback); now one line naming the values."""
    code, err = run_cli(["sample", str(run), "--n", "4", "--out", str(run / "far.png"),
                         "--z", "6625162272674032.0,1e308"], capsys)
    line = _one_line(err, "sample")
    assert code == 2 and "the story cannot draw images there" in line and "1e+308" in line
    assert not (run / "far.png").exists()
