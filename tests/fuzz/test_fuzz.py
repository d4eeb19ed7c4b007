"""Generated inputs at every boundary a user or a file reaches (``inputs.py``), each judged
by ``harness.py``: exit 0, or 2/3/4 with one line saying why; never a traceback, a hang or a
file changed that the command should not touch.

The CI profile is small and derandomized, so CI runs the same inputs every time; set
``PYRO_VAE_FUZZ=long`` for 20 times as many (random), or run ``benchmarks/fuzz.py`` for the
counted long run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from harness import Case, Workspace, run_case, run_in_subprocess
from inputs import BOUNDARIES

CI = settings(derandomize=True, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
SCALE = 20 if os.environ.get("PYRO_VAE_FUZZ") == "long" else 1
EXAMPLES = {"cli": 30, "run-files": 10, "checkpoint": 10, "data": 12, "stories": 5}
"""Inputs per boundary in CI (about 40 s in all on 2 shared cores)."""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("fuzz"))


def _check(ws: Workspace, boundary: str, recipe) -> None:
    _, build = BOUNDARIES[boundary]
    with ws.scratch():
        outcome = run_case(build(recipe, ws))
    assert not outcome.failed, outcome.describe()


def _fuzz(boundary: str):
    strategy, _ = BOUNDARIES[boundary]

    @settings(CI, max_examples=EXAMPLES[boundary] * SCALE, derandomize=SCALE == 1)
    @given(recipe=strategy())
    def test(ws, recipe):
        _check(ws, boundary, recipe)

    test.__doc__ = f"Generated {boundary} inputs end in exit 0 or one line (see the module)."
    return test


test_cli_arguments = _fuzz("cli")
test_run_folder_files = _fuzz("run-files")
test_checkpoint_bytes = _fuzz("checkpoint")
test_data_files = _fuzz("data")
test_story_mutations = _fuzz("stories")


def test_the_real_entry_point_judges_the_same(ws):
    """A few inputs through ``python -m pyro_vae`` (a new process each): an unknown flag, a
    truncated checkpoint, data with NaN; the same endings as in-process."""
    with ws.scratch() as here:
        run = ws.run_copy("vae")
        raw = (run / "checkpoint.safetensors").read_bytes()
        (run / "checkpoint.safetensors").write_bytes(raw[:len(raw) // 2])
        cases = [Case(["train", "--no-such-flag"], [], "unknown flag"),
                 Case(["sample", str(run), "--out", "s.png"], [run], "truncated checkpoint")]
        for case in cases:
            outcome = run_in_subprocess(case, here)
            assert outcome.kind == "refused" and outcome.code == 2, outcome.describe()
            assert outcome.kind == run_case(case).kind
