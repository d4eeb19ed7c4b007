"""Run folders: training into one, resuming and loading it (:mod:`~pyro_vae.runs.folders`), its
checkpoint (:mod:`~pyro_vae.runs.checkpoint`) and its writer lock (:mod:`~pyro_vae.runs.lock`).
"""

from pyro_vae.runs.checkpoint import (
                                      FORMAT,
                                      Checkpoint,
                                      CheckpointError,
                                      load_checkpoint,
                                      load_modules,
                                      save_checkpoint,
)
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
                                      write_summary,
)
from pyro_vae.runs.lock import LOCK_FILE, RunLock, RunLockedError, writer_lock

__all__ = [
    "CHECKPOINT",
    "Checkpoint",
    "CheckpointError",
    "CONFIG",
    "FORMAT",
    "load_checkpoint",
    "load_modules",
    "load_or_train",
    "load_run",
    "load_run_data",
    "LoadedRun",
    "LOCK_FILE",
    "METRICS",
    "resume_run",
    "RunLock",
    "RunLockedError",
    "save_checkpoint",
    "train_run",
    "TrainResult",
    "write_summary",
    "writer_lock",
]
