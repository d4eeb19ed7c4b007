"""The built wheel carries the engine, the generative side and the inference side."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_models_and_guides(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True, text=True)
    if done.returncode != 0 and "No module named" in done.stderr and "setuptools" in done.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("pyro_vae-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every source file of the package, each wing's included, as it is installed.
    sources = ["pyro_vae/py.typed"] + [
        str(p.relative_to(REPO)) if p.parts[len(REPO.parts)] == "pyro_vae"
        else "pyro_vae/" + str(p.relative_to(REPO))
        for d in ("pyro_vae", "models", "guides") for p in sorted((REPO / d).rglob("*.py"))]
    # The explorer's page template and script are package data.
    sources += ["pyro_vae/explore/explorer.html", "pyro_vae/explore/explorer.js"]
    missing = [path for path in sources if path not in names]
    assert missing == [], f"missing from the wheel: {missing}"
    assert not any(n.startswith(("models/", "guides/", "tests/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pyro-vae = pyro_vae.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_no_bare_models_or_guides_imports():
    offenders = []
    for path in REPO.rglob("*.py"):
        if ".venv" in path.parts or "build" in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import models", "import guides", "from models", "from guides")):
                offenders.append(f"{path.relative_to(REPO)}: {stripped}")
    assert not offenders, offenders
    assert not (REPO / "pyro_vae" / "models").exists()
