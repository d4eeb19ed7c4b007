"""benchmarks/peer_ss_vae.py: the batch size the peer's own assertion allows, and the table read
from its logs (the last epoch's test accuracy, and the test accuracy at the best validation)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _peer():
    spec = importlib.util.spec_from_file_location("peer_ss_vae", BENCH / "peer_ss_vae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_batch_divides_the_labels_as_the_example_asserts():
    peer = _peer()
    assert [peer.batch_size(n) for n in (100, 600, 1000, 3000)] == [100, 200, 200, 200]


def test_the_table_reads_the_logs_and_never_picks_the_best_test(tmp_path):
    peer = _peer()
    lines = [f"{e} epoch: avg losses 1.0 2.0 validation accuracy {v} test accuracy {t}"
             for e, (v, t) in enumerate([(0.5, 0.6), (0.7, 0.65), (0.6, 0.9), (0.55, 0.58)])]
    (tmp_path / "ss_vae_M2-100-s0.log").write_text("\n".join(lines + ["best validation ..."]))
    (tmp_path / "ss_vae_M2-100-s1.log").write_text("\n".join(lines[:2]))  # still going
    args = peer.parse_args(["--table", "--labels", "100", "600", "--seeds", "0", "1", "--out",
                            str(tmp_path), "--epochs", "4"])
    text = peer.table(args)
    assert "| 100 | 1 | 4, 2 | 0.5800 | 0.6500 |" in text  # the unfinished seed 1 is not in it
    assert "| 600 | 0 | 0, 0 | – | – |" in text
    assert peer.main(["--labels", "100", "--out", str(tmp_path)]) == 2  # no --source
