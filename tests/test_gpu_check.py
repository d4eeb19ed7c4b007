"""benchmarks/gpu_check.sh, the GPU session's one prepared command, rehearsed on the CPU
(``--dry-run``): each stage starts and ends with status 0, and the log holds it all.

The script's test runs install, import, train, evaluate-ais (which scores IWAE too) and
sample: about 45 s on 2 idle cores, 100 s on busy ones, most of it each stage's interpreter
importing torch. Of the stages left out, the assertions run here in this process (their CPU
mode), bench_train in its own smoke tests (tests/test_bench_train.py), diagnose in
tests/diagnostics; a full ``bash benchmarks/gpu_check.sh --dry-run`` runs them all
(3.5-5 minutes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STAGES = ["train", "evaluate-ais", "sample"]


def _needs(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"gpu_check.sh needs {tool}, which is not on PATH")


def _script(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"),
           "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=timeout)


def test_an_unknown_stage_or_argument_is_refused_at_once(tmp_path):
    _needs("bash")
    for args in (["--stages", "train,nope"], ["--nope"]):
        done = _script(tmp_path, "--dry-run", *args, timeout=30)
        assert done.returncode == 2, done
        assert "see --help" in done.stderr or "unknown stage nope" in done.stderr
    assert not (tmp_path / "out").exists(), "nothing runs before the arguments are checked"


@pytest.mark.slow
def test_the_dry_run_starts_and_ends_every_stage_with_status_0(tmp_path):
    _needs("bash", "timeout", "tee", "sha256sum", "gunzip")
    done = _script(tmp_path, "--dry-run", "--stages", ",".join(STAGES))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    log = tmp_path / "out" / "log.txt"
    assert log.exists(), "the log is written under $OUT"
    text = log.read_text()
    for stage in ["install", "import", *STAGES]:
        assert re.search(rf"\] START {re.escape(stage)} \(timeout \d+ s\)", text), stage
        assert re.search(rf"\] END   {re.escape(stage)}: status 0 in [\d.]+ s", text), stage
    assert "torch.cuda.is_available() = " in text
    assert "ais T=8 " in text and "bdmc T=8 " in text
    for name in ("summary.json", "evaluation_ais.json", "samples.png"):
        assert (tmp_path / "out" / name).exists(), name
    assert not list(tmp_path.glob("gpu_check_work.*")), "the scratch folder is removed"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_assertions_hold_on_the_cpu_and_name_every_scalar_read(capsys):
    """The assertions stage's checks, in their CPU mode: residency, the profiled window, the
    table of scalar reads per step (the lines the GPU run will count), NUTS on the device."""
    gpu_check = _gpu_check()
    gpu_check.main(gpu_check.parse_args(["--device", "cpu", "--data", "digits", "--quick"]))
    out = capsys.readouterr().out
    assert "all on cpu" in out and "cpu path: OK" in out
    assert "draws on {'z': 'cpu'}" in out
    reads = re.findall(r"^\s+([\d.]+)\s+cpu\s+(\S+)", out, flags=re.MULTILINE)
    assert any("pyro_vae/infer/loop.py" in line for _, line in reads), out  # fit's loss read
