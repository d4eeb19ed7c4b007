"""benchmarks/reproduce.py: its rows, its refusals and its table, without training."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          timeout=120)


def test_list_names_every_row_with_its_published_number_and_recipe():
    done = _run("--list")
    assert done.returncode == 0, done.stderr
    for row, published in (("burda-vae", "86.76"), ("burda-iwae-5", "85.54"),
                           ("burda-iwae-50", "84.78"), ("vampprior", "85.57")):
        assert f"{row}: {published} nats" in done.stdout
    assert "batch 20, lr 0.001 (burda), Adam ε 0.0001, 3280 epochs" in done.stdout
    # The extra row says what it changes: the settings of the authors' code.
    assert "Adam ε 0.0001 β (0.99, 0.999), init glorot, 3280 epochs" in done.stdout
    assert "Adam ε 0.0001, 3280 epochs, KL warm-up 100" in done.stdout


def test_an_unknown_row_is_one_line_and_exit_2(tmp_path):
    done = _run("burda-vea", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "reproduce.py: error: unknown row 'burda-vea'; the rows are burda-vae, burda-iwae-5, "
        "burda-iwae-50, burda-vae-code, burda-vae-warmup, vampprior (--list describes them)"]
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_the_table_of_a_row_not_started_says_so(tmp_path):
    if not (SCRIPT.parents[2] / "shared" / "data" / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST under ../shared/data: the script says so and prints no table")
    done = _run("--table", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "| row | ours (IWAE) | published |" in done.stdout


def test_records_without_a_checkpoint_are_one_line_exit_2_and_kept(tmp_path):
    """A row carried without its weights (carry.py --records) cannot resume: said in one line,
    and its records stay as they were."""
    row = tmp_path / "burda-vae-code"
    row.mkdir()
    (row / "config.json").write_text("{}")
    (row / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 6.5, "val_elbo": -183.1}\n')
    before = {p.name: p.read_bytes() for p in row.iterdir()}
    done = _run("burda-vae-code", "--out", str(tmp_path), "--train-only")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "no checkpoint" in lines[-1] and "move it away" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert {p.name: p.read_bytes() for p in row.iterdir()} == before


def test_a_folder_trained_under_another_recipe_is_one_line_exit_2_and_kept(tmp_path):
    """A row whose recipe changed (vampprior's nets became gated) does not resume an older
    folder as if it were the row: said in one line, naming what differs, the folder kept."""
    row = tmp_path / "vampprior"
    row.mkdir()
    (row / "config.json").write_text('{"model": {"encoder": "mlp", "latent_dim": 40}, '
                                     '"train": {"device": "cuda"}}')
    before = {p.name: p.read_bytes() for p in row.iterdir()}
    done = _run("vampprior", "--out", str(tmp_path), "--train-only")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "was trained under another recipe (model.encoder 'mlp' (the recipe: 'gated')): " \
           "move it aside" in lines[0]
    assert {p.name: p.read_bytes() for p in row.iterdir()} == before


def test_sigterm_stops_a_row_at_a_step_with_its_checkpoint_in_one_line(tmp_path):
    """kill -TERM (or Ctrl-C) while a row trains: the fit stops at the next step, writes its
    checkpoint, and the script says in one line that the same command resumes it."""
    if not (SCRIPT.parents[2] / "shared" / "data" / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST under ../shared/data")
    job = subprocess.Popen([sys.executable, str(SCRIPT), "burda-vae", "--train-only",
                            "--out", str(tmp_path), "--threads", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "burda-vae" / "config.json").exists():  # the fit has begun
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
        time.sleep(0.2)
    time.sleep(1.0)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("[burda-vae] interrupted; the same command resumes "
                                            "from its last checkpoint")
    assert "Traceback" not in err
    assert (tmp_path / "burda-vae" / "checkpoint.safetensors").exists()
