"""Faults during a fit: divergence (non-finite loss or gradient) and interruption by a
real SIGINT/SIGTERM, resumed to the same result as an uninterrupted fit."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.files import appended
from pyro_vae.infer.loop import fit
from pyro_vae.infer.objectives import OBJECTIVES
from pyro_vae.runs import cadence
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.folders import CHECKPOINT, METRICS, load_run_data, resume_run, train_run
from pyro_vae.runs.records import BEST
from pyro_vae.state import DivergenceError
from pyro_vae.stories.build import build_vae

from support import metrics_rows, reference_fit, run_cli, same_result

TINY = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "32",
        "--device", "cpu", "--no-progress"]


def _poison(monkeypatch, at_call: int, target: str = "loss") -> list:
    """Make the objective's ``at_call``-th loss NaN (``target="loss"``) or its gradient NaN
    (``target="grad"``); returns a list that records the files seen at that moment."""
    name = TrainConfig().objective  # the objective every fit here uses
    real = OBJECTIVES[name]
    seen: list = []

    def build(cfg):
        inner, calls = real(cfg), [0]

        class Poisoned:
            def differentiable_loss(self, model, guide, x, *, beta=1.0, batch=None):
                loss = inner.differentiable_loss(model, guide, x, beta=beta, batch=batch)
                calls[0] += 1
                if calls[0] != at_call:
                    return loss
                seen.append(calls[0])
                if target == "loss":
                    return loss * float("nan")
                # finite loss, NaN gradient: d/dθ of sqrt(0 * loss) is 0 * inf = NaN
                return loss + torch.sqrt(loss * 0.0)

        return Poisoned()

    monkeypatch.setitem(OBJECTIVES, name, build)
    return seen


def _tiny_fit_inputs(epochs: int, batch_size: int = 256):
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                    train=TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu"))
    data = load_run_data(cfg)
    model, guide = build_vae(cfg.model, data.data_dim, seed=0)
    return cfg, data, model, guide


def _params(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules)
            for k, v in m.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("target, at_call, where", [
    ("loss", 9, "epoch 2, step 3 of 6"),        # 1,438 training images / 256 = 6 steps per epoch
    ("grad", 12, "epoch 2, step 6 of 6"),       # a NaN gradient in an epoch's last step
    ("grad", 9, "epoch 2, step 4 of 6"),        # mid-epoch: the next loss sees NaN parameters
])
def test_divergence_restores_last_good_epoch(monkeypatch, target, at_call, where):
    cfg, data, model, guide = _tiny_fit_inputs(epochs=3)
    good: dict = {}
    # session.model/guide are Programs wrapping model/guide: record the wrapped modules' own keys
    record = lambda session, state, rec: good.update(_params(session.model.fn, session.guide.fn))  # noqa: E731
    _poison(monkeypatch, at_call, target)
    with pytest.raises(DivergenceError) as err:
        fit(model, guide, data, cfg.train, callbacks=[record], progress=False)
    message = str(err.value)
    assert where in message and "end of epoch 1" in message
    assert "--lr" in message and "--clip-norm" in message
    after = _params(model, guide)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(torch.equal(after[k], good[k]) for k in good)


def test_cli_divergence_keeps_written_files(tmp_path, monkeypatch, capsys):
    """A NaN in epoch 2 exits 3 with the epoch and step, leaving epoch 1's files untouched."""
    seen = _poison(monkeypatch, at_call=48, target="loss")  # 45 steps per epoch: epoch 2, step 3
    run = tmp_path / "r"
    code, err = run_cli(["train", *TINY, "--epochs", "3", "--out", str(tmp_path), "--name", "r"], capsys)
    assert seen and code == 3, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "epoch 2, step 3 of 45" in err and "--lr" in err and "--clip-norm" in err
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt.state.epoch == 1 and len(ckpt.state.history) == 1
    assert len((run / METRICS).read_text().splitlines()) == 1
    assert not (run / "summary.json").exists()


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_cli_huge_learning_rate_diverges_cleanly(tmp_path, capsys):
    """No monkeypatching: Adam at lr 1e4 on a Gaussian likelihood overflows in its 2nd step."""
    code, err = run_cli(["train", *TINY, "--likelihood", "gaussian", "--lr", "1e4", "--batch-size",
                      "64", "--epochs", "2", "--out", str(tmp_path), "--name", "r"], capsys)
    assert code == 3, err
    assert "Traceback" not in err and "training diverged" in err and "epoch 1, step" in err
    assert "lower learning rate" in err


def test_stop_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """Deterministic: stop at the 8th step boundary (mid epoch 2, with dynamic binarization
    drawing from the RNG), checkpoint, resume from the folder."""
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                    train=TrainConfig(epochs=3, batch_size=256, device="cpu", kl_warmup=2))
    polls = iter(range(1000))
    first = train_run(cfg, tmp_path, "r", progress=False, stop=lambda: next(polls) == 8)
    assert first.fit.interrupted and first.fit.state.step == 2 and first.fit.state.epoch == 1
    state = load_checkpoint(tmp_path / "r" / CHECKPOINT).state
    assert (state.epoch, state.step) == (1, 2) and state.perm is not None
    resume_run(tmp_path / "r", progress=False)
    same_result(tmp_path / "r", reference_fit(dataclasses.replace(cfg, image_shape=(8, 8))))


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {n} lines")


def _interrupt(argv: list[str], metrics: Path, lines: int, signum: int) -> tuple[int, str]:
    """Run the CLI in a subprocess and send it ``signum`` once metrics.jsonl has ``lines``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(metrics, lines, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_real_signals_then_resume_matches_uninterrupted(tmp_path, capsys):
    """SIGINT during the fit, SIGTERM during the resumed fit, then a resume to the end:
    the same metrics and parameters as one uninterrupted fit with the same seed."""
    epochs, run = 40, tmp_path / "r"  # enough epochs that a loaded machine cannot finish before the signal
    argv = ["train", *TINY, "--batch-size", "64", "--epochs", str(epochs), "--out", str(tmp_path),
            "--name", "r"]
    code, err = _interrupt(argv, run / METRICS, 1, signal.SIGINT)
    assert code == 130, err
    assert "interrupted at epoch" in err and f"--resume {run}" in err and "Traceback" not in err
    first = load_checkpoint(run / CHECKPOINT).state
    assert 1 <= first.epoch < epochs

    resume = ["train", "--resume", str(run), "--no-progress"]
    code, err = _interrupt(resume, run / METRICS, first.epoch + 1, signal.SIGTERM)
    assert code == 130, err
    second = load_checkpoint(run / CHECKPOINT).state
    assert first.epoch < second.epoch < epochs

    code, err = run_cli(resume, capsys)
    assert code == 0, err
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                    train=TrainConfig(epochs=epochs, batch_size=64, device="cpu"), image_shape=(8, 8))
    same_result(run, reference_fit(cfg))


def _full_after(monkeypatch, writes: int) -> None:
    """The device fills up: every fsync of a checkpoint's temporary file after the first
    ``writes`` fails with ENOSPC, as a write does on a full filesystem (no root needed)."""
    real, seen = os.fsync, [0]

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]
        if name.startswith(f".{CHECKPOINT}.") and name.endswith(".tmp"):
            seen[0] += 1
            if seen[0] > writes:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_disk_full_keeps_last_good_checkpoint_and_metrics(tmp_path, monkeypatch, capsys):
    """The third epoch's checkpoint (one after every epoch) meets a full disk: exit 4 with one line naming the file
    and its size; the checkpoint of epoch 2 is intact, metrics.jsonl ends at epoch 2 too, no
    temporary file is left, and --resume finishes the run once there is space."""
    run = tmp_path / "r"
    _full_after(monkeypatch, 2)
    code, err = run_cli(["train", *TINY, "--epochs", "4", "--checkpoint-every", "0", "--out",
                         str(tmp_path), "--name", "r"], capsys)
    assert code == 4, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert f"no space left on the device for {run / CHECKPOINT}: writing it needs " in line
    assert f"--resume {run}" in line
    state = load_checkpoint(run / CHECKPOINT).state
    assert state.epoch == 2
    assert [r[0] for r in metrics_rows(run)] == [r.epoch for r in state.history] == [1, 2]
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    code, err = run_cli(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 0, err
    assert [r[0] for r in metrics_rows(run)] == [1, 2, 3, 4]


def test_appended_line_is_withdrawn_when_the_block_fails(tmp_path):
    """metrics.jsonl keeps an epoch's line only if that epoch's checkpoint was written."""
    path = tmp_path / "m.jsonl"
    path.write_text("1\n")
    with pytest.raises(RuntimeError):
        with appended(path, "2\n"):
            assert path.read_text() == "1\n2\n"
            raise RuntimeError("the checkpoint could not be written")
    assert path.read_text() == "1\n"


def _unshare_tmpfs() -> bool:
    """Whether an unprivileged user namespace can mount a tmpfs here."""
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_tmpfs(), reason="no unprivileged tmpfs (unshare -rm) here")
def test_real_full_filesystem(tmp_path):
    """The issue's trial, for real: a 600 kB filesystem (a tmpfs in a user namespace), a
    network whose checkpoint (~0.4 MB) fits once but not twice beside itself."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = (f"{sys.executable} -m pyro_vae train --data digits --hidden 256 --latent-dim 2 "
             f"--batch-size 256 --epochs 2 --device cpu --no-progress --out /mnt --name r")
    script = (f"mount -t tmpfs -o size=600k none /mnt && {train}; code=$?; "
              f"cp -r /mnt/r {tmp_path}/r; exit $code")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    line = proc.stderr.strip()
    assert proc.returncode == 4, proc.stderr
    assert len(line.splitlines()) == 1 and "no space left on the device for /mnt/r/" in line, line
    state = load_checkpoint(tmp_path / "r" / CHECKPOINT).state
    assert state.epoch >= 1
    assert [r[0] for r in metrics_rows(tmp_path / "r")] == [r.epoch for r in state.history]


def test_a_figure_whose_write_fails_leaves_the_old_picture_whole(tmp_path, monkeypatch):
    """Figures (and evaluate's and diagnose's JSON) are replaced atomically: a reader of a
    run folder sees the previous PNG or the new one. A full disk mid-write keeps the old."""
    from matplotlib.figure import Figure

    import pyro_vae.files as checkpoint
    from pyro_vae.figures import save_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "a.png")
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)  # the bytes do not reach the disk
    fig.add_subplot().plot([0, 1], [0, 1])
    with pytest.raises(checkpoint.DiskFullError, match="a.png"):
        save_figure(fig, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


# --- how often the checkpoint is written (pyro_vae/runs/cadence.py) ----------------------


def _cadence_config(epochs: int) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                     train=TrainConfig(epochs=epochs, batch_size=256, device="cpu"))


def test_checkpoint_cadence_and_a_kill_between_checkpoints(tmp_path, monkeypatch):
    """A clock that reads 10 s × the epoch and a 25 s cadence: the checkpoint is written
    after epochs 1, 4 and 7 (the last); metrics.jsonl gets every epoch at once. A copy of
    the folder taken after epoch 6 is what SIGKILL leaves there (checkpoint of epoch 4, six
    lines); its resume cuts metrics.jsonl back to epoch 4 and ends exactly where the
    uninterrupted fit does, best.safetensors included. The trackers' hook is handed an
    epoch's line only once a checkpoint covers it."""
    cfg, now, seen, sent = _cadence_config(7), [0.0], [], []
    real = cadence.CheckpointWriter.__call__

    def observed(self, session, state, record):
        now[0], self.clock = 10.0 * record.epoch, lambda: now[0]
        self.then = lambda line: sent.append(line["epoch"])
        real(self, session, state, record)
        seen.append((record.epoch, load_checkpoint(self.checkpoint).state.epoch, len(sent)))
        if record.epoch == 6:
            shutil.copytree(self.checkpoint.parent, tmp_path / "killed")

    monkeypatch.setattr(cadence.CheckpointWriter, "__call__", observed)
    train_run(cfg, tmp_path, "r", progress=False, checkpoint_every=25)
    monkeypatch.undo()
    assert seen == [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 4, 4), (5, 4, 4), (6, 4, 4), (7, 7, 7)]
    assert sent == list(range(1, 8))
    killed = tmp_path / "killed"
    assert load_checkpoint(killed / CHECKPOINT).state.epoch == 4
    assert [r[0] for r in metrics_rows(killed)] == [1, 2, 3, 4, 5, 6]
    resume_run(killed, progress=False)
    reference = reference_fit(dataclasses.replace(cfg, image_shape=(8, 8)))
    same_result(killed, reference)
    same_result(tmp_path / "r", reference)
    best, again = (load_checkpoint(run / BEST) for run in (tmp_path / "r", killed))
    assert best.state.epoch == again.state.epoch
    assert all(torch.equal(best.modules[k], again.modules[k]) for k in best.modules)


def test_best_is_the_best_epochs_parameters_when_written_later(tmp_path):
    """With one checkpoint at the end, best.safetensors still holds the parameters of the
    epoch with the best validation ELBO, copied when that epoch ended."""
    cfg, at_epoch = _cadence_config(5), {}
    real = cadence.CheckpointWriter.__call__

    def spy(self, session, state, record):
        at_epoch[record.epoch] = {k: v.detach().clone()
                                  for k, v in session.modules().state_dict().items()}
        real(self, session, state, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cadence.CheckpointWriter, "__call__", spy)
        result = train_run(cfg, tmp_path, "r", progress=False, checkpoint_every=1e9)
    vals = [r.val_elbo for r in result.fit.history]
    best = load_checkpoint(tmp_path / "r" / BEST)
    assert best.state.epoch == 1 + vals.index(max(vals))
    want = at_epoch[best.state.epoch]
    assert all(torch.equal(best.modules[k], want[k]) for k in want)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_failed_fit_writes_its_last_finished_epoch(tmp_path, monkeypatch, capsys):
    """A NaN loss in epoch 3 with a checkpoint due only at the end: the fit's failure
    writes epoch 2 (the epoch the parameters are restored to) and metrics.jsonl agrees."""
    _poison(monkeypatch, at_call=2 * 45 + 3)  # 45 steps per epoch: epoch 3, step 3
    run = tmp_path / "r"
    code, err = run_cli(["train", *TINY, "--epochs", "4", "--checkpoint-every", "1e9", "--out",
                         str(tmp_path), "--name", "r"], capsys)
    assert code == 3 and "epoch 3, step 3 of 45" in err, err
    state = load_checkpoint(run / CHECKPOINT).state
    assert (state.epoch, state.step) == (2, 0)
    assert [r[0] for r in metrics_rows(run)] == [r.epoch for r in state.history] == [1, 2]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_full_disk_at_the_last_checkpoint_cuts_metrics_back(tmp_path, monkeypatch, capsys):
    """Checkpoints after epoch 1 and at the end; the end meets a full disk: exit 4, the
    checkpoint of epoch 1 intact, and metrics.jsonl cut back from 3 lines to its 1."""
    run = tmp_path / "r"
    _full_after(monkeypatch, 1)
    code, err = run_cli(["train", *TINY, "--epochs", "3", "--checkpoint-every", "1e9", "--out",
                         str(tmp_path), "--name", "r"], capsys)
    assert code == 4, err
    assert load_checkpoint(run / CHECKPOINT).state.epoch == 1
    assert [r[0] for r in metrics_rows(run)] == [1]


def test_a_folder_killed_before_its_first_checkpoint(tmp_path, capsys):
    """SIGKILL before the first epoch ends leaves config.json and no checkpoint: --resume
    says to run the train command again (one line, exit 2), which fills the folder anew."""
    argv = ["train", *TINY, "--batch-size", "256", "--epochs", "1", "--out", str(tmp_path),
            "--name", "r"]
    assert run_cli(argv, capsys)[0] == 0
    run = tmp_path / "r"
    (run / CHECKPOINT).unlink()
    (run / METRICS).write_text('{"epoch": 1, "train_elb')  # a torn line, as a kill leaves it
    code, err = run_cli(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds no checkpoint yet" in err and f"--out {tmp_path} --name r" in err
    assert run_cli(argv, capsys)[0] == 0
    assert [r[0] for r in metrics_rows(run)] == [1]


def test_records_without_their_checkpoint_are_kept_and_said(tmp_path, capsys):
    """A folder whose metrics hold finished epochs but whose checkpoint is gone (its records
    carried without its weights) is not told to train anew, which would write over them."""
    argv = ["train", *TINY, "--batch-size", "256", "--epochs", "2", "--out", str(tmp_path),
            "--name", "r"]
    assert run_cli(argv, capsys)[0] == 0
    run = tmp_path / "r"
    (run / CHECKPOINT).unlink()
    before = (run / METRICS).read_bytes()
    code, err = run_cli(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds the records of 2 epochs but no checkpoint" in err and "move it away" in err
    assert (run / METRICS).read_bytes() == before
