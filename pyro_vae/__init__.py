"""pyro-vae: variational autoencoders written as generative stories in Pyro.

The public surface, re-exported here: build a model and guide, load data,
fit, and work with run folders. The parts live in ``pyro_vae.models`` (the
generative side) and ``pyro_vae.guides`` (the inference side).
"""

from pyro_vae.build import build_vae
from pyro_vae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import DATASETS, Data, from_tensor, load_data
from pyro_vae.fit import DivergenceError, EpochRecord, FitResult, TrainState, fit
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.registry import Registry, UnknownNameError
from pyro_vae.runs import LoadedRun, TrainResult, load_run, resume_run, train_run
from pyro_vae.validation import DataError

__version__ = "0.1.0"

__all__ = [
    "DATASETS", "OBJECTIVES", "CheckpointError", "Data", "DataConfig", "DataError",
    "DivergenceError", "EpochRecord", "FitResult", "LoadedRun", "ModelConfig", "Registry",
    "RunConfig", "TrainConfig", "TrainResult", "TrainState", "UnknownNameError", "build_vae",
    "fit", "from_tensor", "load_checkpoint", "load_data", "load_run", "resume_run",
    "save_checkpoint", "train_run",
]
