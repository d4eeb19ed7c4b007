"""Every example runs with tiny settings; an example left off this list fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

# script -> tiny arguments ("{out}" is replaced by a temporary folder)
EXAMPLES = {
    "generative_story.py": ["--epochs", "2", "--out", "{out}"],
    "marginal_likelihood.py": ["--epochs", "2", "--samples", "20", "--points", "10", "--out", "{out}"],
    "swap_priors_and_guides.py": ["--epochs", "1", "--hidden", "16", "--iwae-samples", "5",
                                  "--iwae-points", "20", "--out", "{out}"],
    "diagnose_fit.py": ["--epochs", "2", "--points", "2", "--nuts", "10", "--out", "{out}"],
    "label_prior.py": ["--epochs", "2", "--hidden", "16", "--samples", "20", "--points", "20",
                       "--out", "{out}"],
    "conditional_vae.py": ["--epochs", "2", "--hidden", "16", "--samples", "20", "--points", "20",
                           "--label", "3", "--out", "{out}"],
    "semi_supervised.py": ["--labels", "20", "--epochs", "2", "--hidden", "16", "--out", "{out}"],
}


def test_every_example_is_listed():
    scripts = {p.name for p in EXAMPLES_DIR.glob("*.py")}
    assert scripts == set(EXAMPLES), f"unlisted: {sorted(scripts - set(EXAMPLES))}, " \
                                     f"missing: {sorted(set(EXAMPLES) - scripts)}"


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path):
    args = [a.replace("{out}", str(tmp_path / "out")) for a in EXAMPLES[script]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(EXAMPLES_DIR / script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example says what it shows"
    assert list((tmp_path / "out").rglob("*.png")), "an example writes its figures"
