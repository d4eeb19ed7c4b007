"""Helpers that tests in several folders share (``tests/`` is on ``sys.path`` through its
``conftest.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.infer.loop import fit
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.folders import CHECKPOINT, METRICS, load_run_data
from pyro_vae.stories.build import build_vae


def stable(value):
    """An evaluation entry without what may differ between two runs of the same numbers
    (times, and the memory available, which sized no chunk in the tests)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()
                if k not in ("seconds", "finished", "budget_bytes")}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def stop_after(monkeypatch, k: int) -> None:
    """Every Partial raises KeyboardInterrupt (Ctrl-C) once k units have been written."""
    from pyro_vae.partial import Partial

    save, written = Partial.save, []

    def save_then_stop(self, unit, arrays):
        out = save(self, unit, arrays)
        written.append(unit)
        if len(written) == k:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Partial, "save", save_then_stop)


def run_cli(argv: list[str], capsys=None) -> tuple[int, str]:
    """The CLI in this process: its exit status and what it wrote to stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err if capsys else ""


class Evil:
    """Unpickling this creates a marker file: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def metrics_rows(run: Path) -> list[tuple]:
    """(epoch, train ELBO, validation ELBO, β, learning rate) of every record of a run."""
    rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    return [(r["epoch"], r["train_elbo"], r["val_elbo"], r["beta"], r["lr"]) for r in rows]


def reference_fit(cfg: RunConfig):
    """The same fit, uninterrupted and in-process."""
    data = load_run_data(cfg)
    model, guide = build_vae(cfg.model, data.data_dim, seed=cfg.train.seed)
    result = fit(model, guide, data, cfg.train, progress=False)
    rows = [(r.epoch, r.train_elbo, r.val_elbo, r.beta, r.lr) for r in result.history]
    # result.model/guide are the Programs whose state the run folder checkpoints
    return rows, torch.nn.ModuleDict({"model": result.model, "guide": result.guide}).state_dict()


def same_result(run: Path, reference) -> None:
    rows, params = reference
    assert metrics_rows(run) == rows  # exact: same operations on the same CPU
    saved = load_checkpoint(run / CHECKPOINT).modules
    assert saved.keys() == params.keys()
    assert all(torch.equal(saved[k], params[k]) for k in params)


def train_tiny(out: Path, name: str, *args: str) -> Path:
    """A run folder trained by the CLI on digits in a second or two (2 epochs, a 16-unit
    network), with ``args`` as further ``pyro-vae train`` flags."""
    code = main(["train", "--epochs", "2", "--hidden", "16", "--batch-size", "256", "--device",
                 "cpu", "--no-progress", "--out", str(out), "--name", name, *args])
    assert code == 0, f"training {name} failed with exit status {code}"
    return Path(out) / name


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flipped_digits(path: Path) -> Path:
    """The digits with black and white swapped, as an .npz file: other data of the same size."""
    import numpy as np
    from sklearn.datasets import load_digits

    np.savez(path, x=(16 - load_digits().images) / 16.0)
    return path


def untrained(cfg: RunConfig):
    """The data, story and guide of ``cfg`` as a fresh fit would start them (no training),
    every parameter created, in eval mode: for tests of what is drawn from a fit, not of it."""
    from pyro_vae.infer import materialize
    from pyro_vae.runs.folders import prepare

    data, model, guide = prepare(cfg, None, seed=cfg.train.seed)
    materialize(model, guide, data)
    return data, model.eval(), guide.eval()


def page_spec(path: Path) -> dict:
    """The numbers an ``explorer.html`` holds (its JSON script element)."""
    html = Path(path).read_text()
    start = html.index('<script type="application/json" id="spec">')
    body = html[html.index(">", start) + 1:html.index("</script>", start)]
    return json.loads(body.replace("<\\/", "</"))


def page_array(blob: dict):
    """An array of a page's spec (base64, little-endian) as numpy."""
    import base64

    import numpy as np

    dtype = {"f32": "<f4", "i16": "<i2", "u8": "u1"}[blob["dtype"]]
    return np.frombuffer(base64.b64decode(blob["b64"]), dtype=dtype).reshape(blob["shape"])
