"""Fitting a story and its guide: the objectives (Pyro's ELBOs, traced or compiled), the
precision settings, which rows each step takes (:mod:`~pyro_vae.infer.batches`), one fit's
live objects (:mod:`~pyro_vae.infer.session`), the epoch loop
(:mod:`~pyro_vae.infer.loop`), the whole step as one compiled program
(:mod:`~pyro_vae.infer.fused`) and several processes (:mod:`~pyro_vae.infer.parallel`).
"""

from pyro_vae.infer.batches import Batches, check_batches
from pyro_vae.infer.fused import AUTO_AFTER, AUTO_LEFT, FusedStep
from pyro_vae.infer.inits import INITS
from pyro_vae.infer.loop import EpochCallback, FitResult, fit, kl_weight, mean_elbo
from pyro_vae.infer.objectives import (
                                       IWAE,
                                       OBJECTIVES,
                                       Auto,
                                       Compiled,
                                       Jit,
                                       Objective,
                                       build_objective,
)
from pyro_vae.infer.parallel import data_parallel
from pyro_vae.infer.precision import PRECISIONS, Precision
from pyro_vae.infer.schedules import SCHEDULES
from pyro_vae.infer.session import (
                                       TRAIN_PARTS,
                                       FitSession,
                                       check_train_config,
                                       make_optimizer,
                                       materialize,
                                       resolve_device,
                                       start_session,
)

__all__ = [
    "Auto",
    "AUTO_AFTER",
    "AUTO_LEFT",
    "Batches",
    "check_batches",
    "build_objective",
    "check_train_config",
    "Compiled",
    "data_parallel",
    "EpochCallback",
    "fit",
    "FitResult",
    "FitSession",
    "FusedStep",
    "INITS",
    "IWAE",
    "Jit",
    "kl_weight",
    "make_optimizer",
    "materialize",
    "mean_elbo",
    "Objective",
    "OBJECTIVES",
    "Precision",
    "PRECISIONS",
    "resolve_device",
    "SCHEDULES",
    "start_session",
    "TRAIN_PARTS",
]
