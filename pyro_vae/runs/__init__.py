"""Run folders: training into one, resuming and loading it (:mod:`~pyro_vae.runs.folders`), its
checkpoint (:mod:`~pyro_vae.runs.checkpoint`) and how often it is written
(:mod:`~pyro_vae.runs.cadence`), its writer lock (:mod:`~pyro_vae.runs.lock`), several of them
side by side (:mod:`~pyro_vae.runs.compare`, :mod:`~pyro_vae.runs.compare_page`), and the
experiment trackers a fit also writes to (:mod:`~pyro_vae.runs.tracking`,
:mod:`~pyro_vae.runs.loggers`), and stopping a fit by signal (:mod:`~pyro_vae.runs.signals`).
"""

from pyro_vae.runs.cadence import CHECKPOINT_EVERY, CheckpointWriter
from pyro_vae.runs.checkpoint import (
                                      FORMAT,
                                      Checkpoint,
                                      CheckpointError,
                                      load_checkpoint,
                                      load_modules,
                                      save_checkpoint,
)
from pyro_vae.runs.compare import Comparison, ReadEstimate, RunRow, compare_runs, read_run
from pyro_vae.runs.compare_page import ComparisonFiles, write_comparison
from pyro_vae.runs.folders import (
                                      CHECKPOINT,
                                      CONFIG,
                                      METRICS,
                                      LoadedRun,
                                      TrainResult,
                                      load_or_train,
                                      load_run,
                                      load_run_data,
                                      resume_run,
                                      train_run,
)
from pyro_vae.runs.lock import LOCK_FILE, RunLock, RunLockedError, writer_lock
from pyro_vae.runs.loggers import LOGGERS, Logger
from pyro_vae.runs.pretrained import resolve_weights, run_weights
from pyro_vae.runs.signals import StopFlag, stop_on_signals
from pyro_vae.runs.records import (
    BEST,
    DIAGNOSIS_PARTIAL,
    EVALUATION_PARTIAL,
    RECORDS,
    check_out_file,
    write_summary,
)
from pyro_vae.runs.tracking import TRACKING, MissingExtraError, check_loggers, read_tracking

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CHECKPOINT_EVERY",
    "Checkpoint",
    "CheckpointWriter",
    "CheckpointError",
    "check_loggers",
    "check_out_file",
    "compare_runs",
    "Comparison",
    "ComparisonFiles",
    "CONFIG",
    "DIAGNOSIS_PARTIAL",
    "EVALUATION_PARTIAL",
    "ReadEstimate",
    "FORMAT",
    "load_checkpoint",
    "load_modules",
    "load_or_train",
    "load_run",
    "load_run_data",
    "LoadedRun",
    "Logger",
    "LOGGERS",
    "LOCK_FILE",
    "METRICS",
    "MissingExtraError",
    "read_run",
    "read_tracking",
    "RECORDS",
    "StopFlag",
    "stop_on_signals",
    "resolve_weights",
    "resume_run",
    "run_weights",
    "RunLock",
    "RunLockedError",
    "RunRow",
    "save_checkpoint",
    "TRACKING",
    "train_run",
    "TrainResult",
    "write_comparison",
    "write_summary",
    "writer_lock",
]
