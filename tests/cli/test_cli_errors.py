"""User mistakes at the command line: exit status 2 and one clear line, never a traceback,
and no run folder left behind. Runs ``main`` in-process (the same code as the script)."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.runs.folders import CHECKPOINT, CONFIG, train_run

from support import Evil  # a pickle that would create a marker file

BASE = ["train", "--no-progress", "--epochs", "1", "--hidden", "8", "--device", "cpu"]


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and the error line, checked to be the whole of stderr (argparse's errors
    may add one line pointing to --help, never the usage), no traceback."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith(f"pyro-vae {argv[0]}: error: "), err
    assert lines[1:] in ([], [f"see pyro-vae {argv[0]} --help"]), err
    return code, lines[0]


@pytest.mark.parametrize("argv", [
    ["train", "--prior", "gamma"], ["train", "--epochs", "0"], ["train", "--lr", "abc"],
    ["train", "--batch-size", "0"], ["evaluate", "runs/none", "--samples", "0"],
    ["diagnose", "runs/none", "--points", "0"], ["sample", "runs/none", "--n", "0"],
    ["evaluate"], ["train", "--no-such-flag"]])
def test_an_argument_error_is_one_line_and_a_pointer_to_help(argv, capsys):
    """Not the usage (47 lines for train) above the one line that says what was wrong."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(lines) == 2 and lines[0].startswith(f"pyro-vae {argv[0]}: error: "), lines
    assert lines[1] == f"see pyro-vae {argv[0]} --help"


@pytest.mark.parametrize("args, match", [
    (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["--epochs", "-3"], "--epochs: must be a positive integer, got -3"),
    (["--epochs", "ten"], "--epochs: invalid"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
    (["--batch-size", "-1"], "--batch-size: must be a positive integer"),
    (["--lr", "0"], "--lr: must be a positive number, got 0"),
    (["--lr", "-0.1"], "--lr: must be a positive number"),
    (["--lr", "nan"], "--lr: must be a positive number, got nan"),
    (["--lr", "inf"], "--lr: must be a positive number, got inf"),
    (["--latent-dim", "0"], "--latent-dim: must be a positive integer, got 0"),
    (["--latent-dim", "-2"], "--latent-dim: must be a positive integer"),
    (["--hidden", "0"], "--hidden: expected positive integers"),
    (["--hidden", "a,b"], "--hidden: expected comma-separated integers"),
    (["--sigma", "-1"], "--sigma: must be a positive number"),
    (["--particles", "0"], "--particles: must be a positive integer"),
    (["--kl-warmup", "-1"], "--kl-warmup: must be zero or a positive integer"),
    (["--clip-norm", "0"], "--clip-norm: must be a positive number"),
    (["--early-stopping", "0"], "--early-stopping: must be a positive integer"),
    (["--prior", "gamma"], "--prior: unknown prior 'gamma'; valid prior names: .*normal"),
    (["--guide", "exact"], "--guide: unknown guide 'exact'; valid guide names: .*diagonal"),
    (["--likelihood", "poisson"], "--likelihood: unknown likelihood 'poisson'; valid likelihood names"),
    (["--objective", "kl"], "--objective: unknown objective 'kl'; valid objective names: .*elbo"),
    (["--activation", "swishy"], "--activation: unknown"),
    (["--binarize", "maybe"], "--binarize: invalid choice: 'maybe'"),
])
def test_bad_arguments(tmp_path, capsys, args, match):
    code, line = cli([*BASE, "--out", str(tmp_path), *args], capsys)
    assert code == 2
    assert re.search(match, line), line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, match", [
    (["--lr-schedule", "warm"],
     "unknown lr schedule 'warm'; valid lr schedule names: burda, constant, cosine, plateau, step"),
    (["--lr-schedule-step-every", "3"],
     "--lr-schedule-step-every is a setting of the step lr schedule, but the lr schedule is "
     "constant"),
    (["--lr-schedule", "step", "--lr-schedule-step-every", "0"],
     "the step schedule's every (--lr-schedule-step-every) must be at least 1, got 0"),
    (["--lr-schedule", "step", "--lr-schedule-step-gamma", "1.5"],
     "gamma (--lr-schedule-step-gamma) must lie strictly between 0 and 1 (a factor that lowers"),
    (["--lr-schedule", "cosine", "--lr-schedule-cosine-floor", "0.01"],
     "floor (--lr-schedule-cosine-floor 0.01) must lie below the base rate (--lr 0.001)"),
    (["--lr-schedule", "cosine", "--lr-schedule-cosine-floor", "-1"],
     "floor (--lr-schedule-cosine-floor) must be zero or a positive number, got -1"),
    (["--lr-schedule", "burda", "--epochs", "3281"],
     "--lr-schedule burda spans 3,280 epochs (3^i at lr·10^(-i/7) for i = 0..7), so --epochs "
     "3281 has no rate after epoch 3,280; give at most 3280"),
    (["--lr-schedule", "plateau", "--lr-schedule-plateau-patience", "0"],
     "patience (--lr-schedule-plateau-patience) must be at least 1, got 0"),
    (["--lr-schedule", "plateau", "--lr-schedule-plateau-factor", "1"],
     "factor (--lr-schedule-plateau-factor) must lie strictly between 0 and 1"),
    (["--lr-schedule", "plateau", "--early-stopping", "10"],
     "--early-stopping 10 would end the fit before the plateau schedule ever lowers the rate"),
    (["--adam-betas", "0.9,1"], "adam_betas (--adam-betas) must be two numbers in [0, 1)"),
    (["--adam-betas=-0.1,0.999"], "must be two numbers in [0, 1), the decay rates of Adam's "
                                     "running means, got (-0.1, 0.999)"),
    (["--adam-betas", "0.9"], "adam_betas (--adam-betas) must be two numbers in [0, 1)"),
    (["--adam-eps", "0"], "adam_eps (--adam-eps) must be a positive number, got 0.0"),
    (["--adam-eps=-1e-8"], "adam_eps (--adam-eps) must be a positive number, got -1e-08"),
    (["--adam-eps", "nan"], "adam_eps (--adam-eps) must be a positive number, got nan"),
    (["--init", "xavier"],
     "unknown initialization 'xavier'; valid initialization names: default, glorot, normal"),
    (["--init-normal-std", "0.1"],
     "--init-normal-std is a setting of the normal initialization, but the initialization "
     "is default"),
    (["--init", "normal", "--init-normal-std", "0"],
     "the normal initialization's std (--init-normal-std) must be a positive number, got 0.0"),
])
def test_bad_fit_settings_are_one_line(tmp_path, capsys, args, match):
    """Not argparse's refusals (usage above the error): one sentence, before any file."""
    try:
        code = main([*BASE, "--out", str(tmp_path), *args])
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("pyro-vae train: error: ") and match in lines[0], lines
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, match", [
    (["--data", "cifar"], "unknown dataset 'cifar'; valid dataset names: celeba, cifar10, digits"),
    (["--device", "gpu0"], "unknown device 'gpu0'; expected cpu, cuda, cuda:N or auto"),
    (["--prior", "vamp", "--guide", "iaf"], "the vamp prior cannot be used with the 'iaf' guide"),
    (["--objective", "iwae", "--particles", "1"], "the iwae objective needs particles >= 2"),
])
def test_bad_names_and_combinations(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code, line = cli([*BASE, "--out", str(tmp_path / "runs"), *args], capsys)
    assert code == 2 and match in line, line
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_missing_run(tmp_path, capsys, monkeypatch):
    """Only the flags --resume takes (BASE's --hidden and --out would be refused first)."""
    monkeypatch.chdir(tmp_path)
    code, line = cli(["train", "--no-progress", "--epochs", "1", "--device", "cpu",
                      "--resume", "nowhere"], capsys)
    assert code == 2 and "no config.json at nowhere/config.json" in line, line
    assert not (tmp_path / "runs").exists()


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays) if path.suffix == ".npz" else np.save(path, *arrays.values())
    return path


def _binary(n: int, shape=(4, 4), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *shape)) > 0.5).astype(np.float32)


def _with(x: np.ndarray, index: tuple, value) -> np.ndarray:
    x = x.copy()
    x[index] = value
    return x


BAD_DATA = {  # file name -> (arrays, extra flags, what the message must say)
    "nan.npz": (dict(x=_with(_binary(40), (17, 2, 3), np.nan)), [],
                "nan.npz images: sample 17 has non-finite pixel values (NaN or inf); expected finite"),
    "inf_test.npz": (dict(x=_binary(40), x_test=_with(_binary(10), (4, 0, 0), np.inf)), [],
                     "inf_test.npz test images: sample 4 has non-finite"),
    "empty.npz": (dict(x=np.zeros((0, 4, 4), np.float32)), [], "images: the dataset is empty (shape [0, 4, 4])"),
    "flat.npy": (dict(x=np.zeros(40, np.float32)), [],
                 "flat.npy images: expected shape [N, D], [N, H, W] or [N, C, H, W], got [40]"),
    "five_d.npz": (dict(x=np.zeros((4, 1, 1, 4, 4))), [], "got [4, 1, 1, 4, 4]"),
    "range.npz": (dict(x=_with(_binary(40), (9, 1, 1), 300.0)), ["--likelihood", "gaussian"],
                  "range.npz images: sample 9 has values outside [0, 255]"),
    "negative.npz": (dict(x=_with(_binary(40), (3, 1, 1), -0.5)), ["--likelihood", "gaussian"],
                     "sample 3 has values outside [0, 255]"),
    "grey.npz": (dict(x=_with(_binary(40), (23, 0, 1), 0.5)), ["--binarize", "none"],
                 "grey.npz images: sample 23 has values other than 0 and 1, which a Bernoulli "
                 "likelihood cannot score; choose --binarize dynamic or threshold"),
    "short_labels.npz": (dict(x=_binary(40), y=np.arange(39)), [],
                         "short_labels.npz labels: expected 40 labels (one per image), got 39; index 39"),
    "long_labels.npz": (dict(x=_binary(40), y=np.arange(41)), [], "expected 40 labels (one per image), got 41"),
    "2d_labels.npz": (dict(x=_binary(40), y=np.zeros((40, 2), int)), [], "got shape [40, 2]"),
    "frac_labels.npz": (dict(x=_binary(40), y=_with(np.zeros(40), 5, 2.5)), [],
                        "frac_labels.npz labels: label 5 is 2.5; expected integer class labels"),
    "test_size.npz": (dict(x=_binary(40), x_test=_binary(10, (5, 5))), [],
                      "test images: images have shape [5, 5], but the training set has images of "
                      "shape [4, 4]"),
    "no_x.npz": (dict(pixels=_binary(40), masks=_binary(40)), [],
                 "no_x.npz: no array named 'x' among its 2 arrays (masks, pixels)"),
    "keras_layout.npz": (dict(x_train=_binary(40), y_train=np.zeros(40, int), x_test=_binary(10)), [],
                         "no array named 'x' among its 3 arrays (x_test, x_train, y_train)"),
    "strings.npy": (dict(x=np.array([["a", "b"]] * 4)), [], "strings.npy images: expected a numeric array"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_is_refused_before_training(tmp_path, capsys, name):
    arrays, flags, match = BAD_DATA[name]
    path = _save(tmp_path / name, **arrays)
    code, line = cli([*BASE, "--data", str(path), "--out", str(tmp_path / "runs"), *flags], capsys)
    assert code == 2 and match in line, line
    assert not (tmp_path / "runs").exists()


def test_pickled_data_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    code, line = cli([*BASE, "--data", str(path), "--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and "evil.npy cannot be read as plain numeric arrays" in line
    assert "pickled object arrays are never loaded" in line and not marker.exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-epoch run on a 4×4 image file, to be copied and broken."""
    root = tmp_path_factory.mktemp("run")
    data = _save(root / "images.npz", x=_binary(60))
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(8,)), data=DataConfig(name=str(data)),
                    train=TrainConfig(epochs=2, batch_size=32, device="cpu"))
    return train_run(cfg, root, "r", progress=False).path


@pytest.fixture
def copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "r"))


def test_existing_run_name_is_refused(run, capsys):
    code, line = cli([*BASE, "--out", str(run.parent), "--name", "r",
                      "--data", str(run.parent / "images.npz")], capsys)
    assert code == 2 and f"{run} already holds a run; resume it with --resume {run}" in line


def test_resume_with_other_image_size(copy, capsys, tmp_path):
    """The run's data file was replaced by images of another size."""
    data = Path(json.loads((copy / CONFIG).read_text())["data"]["name"])
    cfg = json.loads((copy / CONFIG).read_text())
    cfg["data"]["name"] = str(_save(tmp_path / "other.npz", x=_binary(60, (5, 5))))
    (copy / CONFIG).write_text(json.dumps(cfg))
    before = (copy / CHECKPOINT).read_bytes()
    code, line = cli(["train", "--resume", str(copy), "--epochs", "3", "--no-progress"], capsys)
    assert code == 2 and data.exists()
    assert ("other.npz: images have shape [5, 5], but the run being resumed (config.json "
            "image_shape) has images of shape [4, 4]") in line
    assert (copy / CHECKPOINT).read_bytes() == before
    assert json.loads((copy / CONFIG).read_text())["train"]["epochs"] == 2  # not rewritten


def test_resume_to_fewer_epochs_than_done(copy, capsys):
    code, line = cli(["train", "--resume", str(copy), "--epochs", "1", "--no-progress"], capsys)
    assert code == 2 and f"--epochs 1 is fewer than the 2 epochs {copy} has already run" in line
    assert json.loads((copy / CONFIG).read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("args", [["--prior-mixture-components", "3"],
                                  ["--lr-schedule", "step"], ["--lr-schedule-step-every", "3"],
                                  ["--adam-eps", "1e-4"], ["--init", "normal"]])
def test_resume_refuses_a_new_setting_naming_its_flag(copy, capsys, args):
    code, line = cli(["train", "--resume", str(copy), "--no-progress", *args], capsys)
    assert code == 2 and f"{args[0]} cannot change when a run is resumed" in line, line


@pytest.mark.parametrize("command", ["train", "sample"])
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_checkpoint_via_cli(copy, capsys, tmp_path, command, writer):
    marker = tmp_path / "pwned"
    evil = {"model": Evil(marker)}
    if writer == "torch":
        torch.save(evil, copy / CHECKPOINT)
    else:
        (copy / CHECKPOINT).write_bytes(pickle.dumps(evil))
    argv = ["train", "--resume", str(copy), "--no-progress"] if command == "train" else ["sample", str(copy)]
    code, line = cli(argv, capsys)
    assert code == 2 and "is not a pyro-vae checkpoint" in line and "pickled" in line
    assert not marker.exists()


def test_truncated_checkpoint_via_cli(copy, capsys):
    raw = (copy / CHECKPOINT).read_bytes()
    (copy / CHECKPOINT).write_bytes(raw[:len(raw) - 100])
    code, line = cli(["sample", str(copy)], capsys)
    assert code == 2 and "truncated" in line and str(copy / CHECKPOINT) in line


def test_other_architecture_via_cli(copy, capsys):
    cfg = json.loads((copy / CONFIG).read_text())
    cfg["model"]["hidden_sizes"] = [16]
    (copy / CONFIG).write_text(json.dumps(cfg))
    code, line = cli(["sample", str(copy)], capsys)
    assert code == 2
    assert "parameter 'model.story.decoder.net.0.weight' has shape [8, 2] but this model expects [16, 2]" in line


@pytest.mark.parametrize("text, match", [
    ("{not json", "config.json is not valid JSON"),
    ('{"model": {"latent_dims": 2}}', "config.json: config.model: unknown config keys ['latent_dims']"),
    ('{"train": {"lr": "fast"}}', "config.json: config.train.lr: expected float, got 'fast'"),
])
def test_broken_config_json(copy, capsys, text, match):
    (copy / CONFIG).write_text(text)
    code, line = cli(["sample", str(copy)], capsys)
    assert code == 2 and match in line, line
