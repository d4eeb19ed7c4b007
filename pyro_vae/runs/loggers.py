"""The experiment trackers a fit can write to: a registry of loggers (``train --log NAME``).

.. code-block:: text

    runs/<name>/tensorboard/               tensorboard: event files (tensorboard --logdir)
    runs/<name>/mlruns/                    mlflow: its local file store (or --mlflow-uri)
    runs/<name>/csv/<scalar>.csv           csv: one file per scalar (epoch,value), and
    runs/<name>/csv/hyperparameters.csv    the config, one setting a row

Each logger is a class registered in :data:`LOGGERS`, built as ``cls(folder, track, state,
held)``: the run folder, the :class:`~pyro_vae.config.TrackConfig`, what ``tracking.json``
recorded for it (``None`` for a logger new to the run) and the epochs it already holds; a
resumed run writes only later epochs. Its ``requires`` names the module it imports (checked
before a fit starts, :func:`~pyro_vae.runs.tracking.check_loggers`). The loggers import their
packages only when built: ``pip install -e ".[track]"`` adds them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np

from pyro_vae.config import TrackConfig
from pyro_vae.files import atomic_write
from pyro_vae.registry import Registry

LOGGERS: Registry = Registry("logger")
"""Experiment trackers by name: ``tensorboard``, ``mlflow``, ``csv``."""

EXPERIMENT = "pyro-vae"
"""The MLflow experiment that runs are created in."""

# What TensorBoard's hyperparameter view puts beside each run's settings.
HPARAM_METRICS = ("train_elbo", "val_elbo")

# MLflow's status of a run, by how the fit ended.
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class Logger(Protocol):
    """One tracker that a fit writes to. ``scalars`` has the epoch on disk when it returns
    (``tracking.json`` then records it as held)."""

    requires: str | None

    def state(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps to continue this tracker's run (e.g. MLflow's run id)."""

    def hyperparameters(self, values: dict[str, Any]) -> None:
        """The run's config, flattened (``train.lr``: 0.001), once, when the run starts."""

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's numbers, as metrics.jsonl holds them, at step ``epoch``."""

    def images(self, epoch: int, paths: Sequence[Path]) -> None:
        """The run's figures (PNG files) at step ``epoch``."""

    def close(self, status: str) -> None:
        """``finished``, ``interrupted`` or ``failed``."""


def _text(value: Any) -> str | int | float | bool:
    """A setting as a tracker takes it: numbers, strings and booleans as they are, anything
    else (lists, None) as its JSON."""
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


@LOGGERS.register("tensorboard")
class TensorBoardLogger:
    """``torch.utils.tensorboard`` event files in ``RUN/tensorboard/``."""

    requires = "torch.utils.tensorboard"

    def __init__(self, folder: Path, track: TrackConfig, state: dict | None, held: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run adds event files to the same folder, starting at step held + 1:
        # TensorBoard's reader drops any earlier event at or past that step (one written after
        # tracking.json last said what the tracker held), so each step is read once.
        self.writer = SummaryWriter(str(Path(folder) / "tensorboard"),
                                    purge_step=None if state is None else held + 1)

    def state(self) -> dict[str, Any]:
        return {}

    def hyperparameters(self, values: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        shown = {k: _text(v) for k, v in values.items()}
        for summary in hparams(shown, {k: 0.0 for k in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(values, indent=1) + "\n```", 0)
        self.writer.flush()

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def images(self, epoch: int, paths: Sequence[Path]) -> None:
        from PIL import Image  # matplotlib's own dependency

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"figures/{Path(path).stem}", pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


def is_local(uri: str) -> bool:
    """Whether an MLflow tracking URI is a folder on this machine (its file store)."""
    return urlparse(uri).scheme in ("", "file")


@contextlib.contextmanager
def _file_store_allowed(uri: str):
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` says otherwise (its
    database store needs SQLAlchemy, which mlflow-skinny lacks); set while a logger writes
    to a local store, as it was afterwards."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if is_local(uri) and before is None:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if is_local(uri) and before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


@LOGGERS.register("mlflow")
class MlflowLogger:
    """One MLflow run per run folder, in experiment ``pyro-vae`` of ``--mlflow-uri`` (default:
    the file store ``RUN/mlruns``); its id is kept in ``tracking.json``, so that a resumed fit
    continues it."""

    requires = "mlflow"

    def __init__(self, folder: Path, track: TrackConfig, state: dict | None, held: int) -> None:
        from mlflow.tracking import MlflowClient

        folder = Path(folder)
        self.uri = track.mlflow_uri or (folder / "mlruns").resolve().as_uri()
        self._allowed = contextlib.ExitStack()
        self._allowed.enter_context(_file_store_allowed(self.uri))
        self.client = MlflowClient(tracking_uri=self.uri)
        if state is None:
            found = self.client.get_experiment_by_name(EXPERIMENT)
            experiment = found.experiment_id if found else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(experiment, run_name=folder.name,
                                         tags={"pyro_vae.run_folder": str(folder.resolve())})
            self.run_id = run.info.run_id
        else:
            self.run_id = state["run_id"]
            self._reopen(folder)

    def _reopen(self, folder: Path) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(self.run_id)
        except MlflowException:
            self._allowed.close()
            raise ValueError(f"{folder / 'tracking.json'} records the MLflow run {self.run_id}, "
                             f"which {self.uri} does not hold; give --mlflow-uri where it "
                             f"is") from None
        self.client.update_run(self.run_id, status="RUNNING")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def hyperparameters(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(_text(v))) for k, v in values.items()]
        for lo in range(0, len(params), 100):  # MLflow takes at most 100 in one batch
            self.client.log_batch(self.run_id, params=params[lo:lo + 100])

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch)
                                                    for k, v in values.items()])

    def images(self, epoch: int, paths: Sequence[Path]) -> None:
        for path in paths:  # the same names again at a later epoch: the newer figures
            self.client.log_artifact(self.run_id, str(path), "figures")

    def close(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
        finally:
            self._allowed.close()


@LOGGERS.register("csv")
class CsvLogger:
    """``RUN/csv/<scalar>.csv`` (``epoch,value`` rows, the value as Python writes the float,
    so that it reads back exactly) and ``RUN/csv/hyperparameters.csv``."""

    requires = None
    HYPERPARAMETERS = "hyperparameters.csv"

    def __init__(self, folder: Path, track: TrackConfig, state: dict | None, held: int) -> None:
        self.folder = Path(folder) / "csv"
        self.folder.mkdir(exist_ok=True)
        for path in self.folder.glob("*.csv"):  # rows past what the tracker holds go
            if path.name != self.HYPERPARAMETERS:
                lines = path.read_text().splitlines(keepends=True)
                kept = lines[:1] + [r for r in lines[1:] if int(r.split(",", 1)[0]) <= held]
                if kept != lines:
                    atomic_write(path, "".join(kept).encode())

    def state(self) -> dict[str, Any]:
        return {}

    def hyperparameters(self, values: dict[str, Any]) -> None:
        out = io.StringIO()
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(("name", "value"))
        rows.writerows((k, _text(v)) for k, v in values.items())
        atomic_write(self.folder / self.HYPERPARAMETERS, out.getvalue().encode())

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            path = self.folder / f"{key}.csv"
            new = not path.exists()
            with path.open("a") as f:
                f.write(("epoch,value\n" if new else "") + f"{epoch},{value!r}\n")

    def images(self, epoch: int, paths: Sequence[Path]) -> None:
        """Nothing: the figures are PNG files in the run folder already."""

    def close(self, status: str) -> None:
        """Nothing: every row was written as it came."""
