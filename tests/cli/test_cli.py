"""The command line, end to end in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyro_vae.cli import build_parser, main
from pyro_vae.cli.common import COMMANDS

TINY = ["--epochs", "2", "--hidden", "16", "--batch-size", "256", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def test_train_writes_the_run_folder(run_dir):
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.json",
                 "elbo_curves.png", "reconstructions.png", "prior_samples.png", "latent_map.png",
                 "manifold.png", "explorer.html"):
        assert (run_dir / name).stat().st_size > 0, name
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["hidden_sizes"] == [16] and config["image_shape"] == [8, 8]


def test_sample_writes_a_grid(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "8", "--z", "0.1,0.5", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["sample", str(run_dir), "--n", "4"]) == 0
    assert (run_dir / "samples.png").exists()


def test_resume_continues_to_more_epochs(run_dir):
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--no-progress"]) == 0
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_wrong_latent_point_is_a_user_error(run_dir, capsys):
    assert main(["sample", str(run_dir), "--z", "0.1,0.2,0.3"]) == 2
    assert "site 'z' has 2" in capsys.readouterr().err


def test_unknown_name_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--likelihood", "poisson"])
    assert exit_.value.code == 2
    assert "valid likelihood names: bernoulli" in capsys.readouterr().err


def test_help_explains_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        for action in sub.choices[name]._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_states_each_default_once_and_only_real_ones():
    """A help that says its own default gets no second one from the formatter, and a flag
    without a default value (None, off, empty) shows none: ``(default: RUN) (default: None)``
    and ``(default: False)`` read as noise."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        formatter = sub.choices[name]._get_formatter()
        for action in sub.choices[name]._actions:
            if action.help is None:
                continue
            text = formatter._expand_help(action)
            where = f"{name} {action.option_strings or action.dest}: {text!r}"
            own = action.help.replace("%(default).0s", "").lower().count("default")
            appended = text.lower().count("default") - own
            assert appended == 0 if own else appended <= 1, where
            for empty in ("(default: None)", "(default: False)", "(default: [])", "(default: )"):
                assert empty not in text, where
    train = sub.choices["train"]
    text = {a.dest: train._get_formatter()._expand_help(a) for a in train._actions if a.help}
    assert text["batch_size"].endswith("(default: 128)")  # a real default is still shown
    assert text["hidden"].endswith("(default: 256,128)")  # as the flag is written


def _train_config(*argv: str):
    from pyro_vae.cli.train import config_from_args
    return config_from_args(build_parser().parse_args(["train", *argv])).train


def test_burda_sets_the_default_number_of_epochs():
    assert _train_config("--lr-schedule", "burda").epochs == 3280  # the schedule's length
    assert _train_config("--lr-schedule", "burda", "--epochs", "100").epochs == 100
    assert _train_config().epochs == 1000 and _train_config().options == {}


@pytest.mark.parametrize("argv, fields", [
    (["--lr-schedule", "plateau", "--lr-schedule-plateau-patience", "4"],
     {"lr_schedule": "plateau", "options": {"lr_schedule": {"plateau": {"patience": 4,
                                                                         "factor": 0.5}}}}),
    (["--adam-betas", "0.9,0.99", "--adam-eps", "1e-4"], {"adam_betas": (0.9, 0.99),
                                                          "adam_eps": 1e-4}),
    (["--init", "normal"], {"init": "normal", "options": {"init": {"normal": {"std": 1e-3}}}}),
])
def test_fit_flags_make_the_train_config(argv, fields):
    train = _train_config(*argv)
    assert {k: getattr(train, k) for k in fields} == fields


def test_metrics_record_each_epochs_learning_rate(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["lr"] for line in lines][:2] == [1e-3, 1e-3]


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout


def test_train_on_mnist_from_shared_data(mnist_root, tmp_path):
    args = ["train", "--data", "mnist", "--data-root", str(mnist_root), "--epochs", "1",
            "--hidden", "64", "--batch-size", "512", "--no-progress", "--out", str(tmp_path),
            "--name", "m"]
    assert main(args) == 0
    assert (tmp_path / "m" / "checkpoint.safetensors").exists()


def test_help_and_a_mistyped_command_load_no_torch():
    """``pyro-vae --help`` lists the commands from their one-line helps without importing the
    commands' modules (torch and the wings alone take seconds to import)."""
    code = ("import sys\nfrom pyro_vae.cli import main\n"
            "for argv in (['--help'], ['trian']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'pyro', 'numpy', 'pyro_vae.runs') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "invalid choice: 'trian'" in done.stderr


BRANCHY = '''import pyro
import pyro.distributions as dist
import torch


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        logits = z.sum(-1, keepdim=True).expand(-1, x.shape[1])
        if bool(z.sum() > 0):
            logits = -logits
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
'''


def test_jit_fallback_is_one_line_naming_the_story_line_only(tmp_path, capsys):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    assert main(["train", "--model", f"{tmp_path / 'branchy.py'}:model", "--epochs", "1",
                 "--batch-size", "512", "--hidden", "8", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path), "--name", "b"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "not used" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert "branchy.py:10" in lines[0] and "pyro_vae" not in lines[0]
