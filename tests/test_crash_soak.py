"""benchmarks/crash_soak.py, short: 8 SIGKILLs of a seeded fit (at random moments and at
named points inside its writes) and 1 of an evaluation, each followed by a resume, lose
nothing; the soak itself continues where a previous call stopped. (The long soak and the
2-rank torchrun mode are run by hand: benchmarks/README.md.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
FIT = "--data digits --hidden 16 --latent-dim 2 --batch-size 128 --epochs 6 --device cpu --seed 3"


def _crash_soak():
    sys.path.insert(0, str(BENCH))  # its soak_checks
    try:
        spec = importlib.util.spec_from_file_location("crash_soak", BENCH / "crash_soak.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["crash_soak"] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_a_short_soak_loses_nothing_and_resumes_itself(tmp_path, capsys):
    soak = _crash_soak()
    common = ["--evaluate-kills", "1", "--out", str(tmp_path), "--train-args", FIT]
    first = soak.main(["--kills", "4", *common])
    assert first["modes"]["fit"]["kills"] == 4
    reference = first["references"]["fit"]
    state = soak.main(["--kills", "8", *common])  # continues: 4 more, the same reference
    assert state["references"]["fit"]["seconds"] == reference["seconds"]  # not run again
    fit, evaluate = state["modes"]["fit"], state["modes"]["evaluate"]
    assert fit["kills"] == 8 and evaluate["kills"] == 1
    assert fit["random"] >= 1 and fit["point"] >= 1  # both kinds, with this seed
    assert fit["resumes"] + fit["restarts"] >= 8 and fit["trials"] >= 1
    assert evaluate["trials"] >= 1
    assert fit["losses"] == evaluate["losses"] == 0, fit["failures"] + evaluate["failures"]
    out = capsys.readouterr().out
    assert "losses: 0" in out and out.splitlines()[0].split()[:3] == ["mode", "kills", "random"]
    assert json.loads((tmp_path / "soak.json").read_text())["modes"]["fit"]["kills"] == 8
