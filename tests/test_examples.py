"""Every example runs with tiny settings; an example left off this list fails the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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

# notebook -> the environment that keeps it quick (the notebook says which variable it reads)
NOTEBOOKS = {"tutorial.ipynb": {"PYRO_VAE_TUTORIAL_EPOCHS": "20"}}


def test_every_example_is_listed():
    scripts = {p.name for p in EXAMPLES_DIR.glob("*.py")}
    assert scripts == set(EXAMPLES), f"unlisted: {sorted(scripts - set(EXAMPLES))}, " \
                                     f"missing: {sorted(set(EXAMPLES) - scripts)}"
    notebooks = {p.name for p in EXAMPLES_DIR.glob("*.ipynb")}
    assert notebooks == set(NOTEBOOKS), f"notebooks listed: {sorted(NOTEBOOKS)}, found: {sorted(notebooks)}"


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script, tmp_path):
    args = [a.replace("{out}", str(tmp_path / "out")) for a in EXAMPLES[script]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(EXAMPLES_DIR / script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example says what it shows"
    assert list((tmp_path / "out").rglob("*.png")), "an example writes its figures"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_a_notebook_runs_top_to_bottom(notebook, tmp_path, monkeypatch):
    """Executed by nbclient in a kernel of this interpreter (a kernel spec made here, so no
    installed one is picked up), in a fresh folder; any error in any cell fails the test."""
    import nbformat
    from nbclient import NotebookClient

    spec = tmp_path / "jupyter" / "kernels" / "pyro-vae-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pyro-vae tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline
    for name, value in NOTEBOOKS[notebook].items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(EXAMPLES_DIR / notebook, as_version=4)
    for name in NOTEBOOKS[notebook]:
        assert any(name in cell.source for cell in nb.cells), f"{notebook} never reads {name}"
    start = time.monotonic()
    NotebookClient(nb, timeout=300, kernel_name="pyro-vae-test",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{notebook} ran in {time.monotonic() - start:.1f} s")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    images = [o for cell in code for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6, "the tutorial draws its figures"
    assert (tmp_path / "runs" / "tutorial" / "explorer.html").is_file()


def test_the_committed_notebooks_keep_their_figures_and_stay_small():
    """Learners see the figures without running anything; the file stays under 1 MB."""
    import nbformat

    for notebook in NOTEBOOKS:
        path = EXAMPLES_DIR / notebook
        nb = nbformat.read(path, as_version=4)
        assert path.stat().st_size < 1_000_000
        assert sum("image/png" in o.get("data", {}) for cell in nb.cells
                   if cell.cell_type == "code" for o in cell.outputs) >= 6
        errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
                  if o.output_type == "error" or o.get("name") == "stderr"]
        assert errors == []
