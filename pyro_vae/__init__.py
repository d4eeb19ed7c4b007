"""pyro-vae: variational autoencoders written as generative stories in Pyro.

The public surface: configure, load data, build a story and its guide, fit, evaluate
log p(x), diagnose, work with run folders, export their networks and explore their latent
spaces. The engine is nine wings over a flat foundation (``programs``, ``traces``,
``config``, ``pixels``, ``files``, ...):

.. code-block:: text

    pyro_vae.data         images in memory or streamed
    pyro_vae.stories      where a model comes from: built-in parts, shipped stories, story files
    pyro_vae.infer        objectives and the fit
    pyro_vae.evaluation   log p(x): importance sampling, AIS, BDMC; classification reports
    pyro_vae.diagnostics  NUTS against the guide, gaps, collapse, predictive checks
    pyro_vae.runs         run folders, checkpoints, the writer lock, comparing runs
    pyro_vae.export       a run's decoder and encoder as torch.export or ONNX files
    pyro_vae.explore      explorer.html: the latent space in a page, the decoder live

The parts live in ``pyro_vae.models`` (the generative side) and ``pyro_vae.guides`` (the
inference side). Every name below is imported on first use, so ``import pyro_vae`` (and
``pyro-vae --help``) does not load the wings it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name is defined: a wing's face or a foundation module.
_SOURCES: dict[str, tuple[str, ...]] = {
    "pyro_vae.config": ("DataConfig", "ModelConfig", "RunConfig", "StoryConfig", "TrackConfig",
                        "TrainConfig"),
    "pyro_vae.registry": ("Registry", "UnknownNameError"),
    "pyro_vae.validation": ("DataError",),
    "pyro_vae.files": ("DiskFullError",),
    "pyro_vae.state": ("DivergenceError", "EpochRecord", "TrainState"),
    "pyro_vae.programs": ("LatentScale", "Program", "as_program", "scale_latents", "seeded"),
    "pyro_vae.traces": ("latent_sites", "log_mean_exp"),
    "pyro_vae.jit": ("JitFallbackWarning",),
    "pyro_vae.predictive": ("mean_latents", "prior_predictive", "reconstruct"),
    "pyro_vae.figures": ("save_figure", "save_grid"),
    "pyro_vae.data": ("DATASETS", "Data", "Split", "from_tensor", "load_data"),
    "pyro_vae.stories": ("STORIES", "StoryError", "UntrustedStoryError", "build_part", "build_vae",
                         "trust_file", "with_options"),
    "pyro_vae.infer": ("OBJECTIVES", "PRECISIONS", "FitResult", "fit", "mean_elbo"),
    "pyro_vae.evaluation": ("AISConfig", "AISResult", "BDMCResult", "Evaluation", "accuracy", "ais",
                            "ais_curve", "bdmc", "evaluate", "log_importance_weights",
                            "plot_k_curve", "plot_khat", "psis_diagnostics", "scored_splits"),
    "pyro_vae.diagnostics": ("DiagnoseConfig", "Diagnostics", "diagnose", "verdicts",
                             "write_diagnostics"),
    "pyro_vae.explore": ("ExplorerPage", "write_explorer"),
    "pyro_vae.runs": ("CHECKPOINT", "CONFIG", "LOGGERS", "METRICS", "CheckpointError",
                      "Comparison", "LoadedRun", "RunLockedError", "TrainResult", "compare_runs",
                      "load_checkpoint", "load_or_train", "load_run", "resume_run",
                      "save_checkpoint", "train_run", "write_comparison"),
    "pyro_vae.export": ("ExportError", "export_run"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}
_WINGS = ("data", "stories", "infer", "evaluation", "diagnostics", "runs", "export", "explore",
          "models",
          "guides", "cli", "figures", "predictive")

__all__ = sorted(_WHERE) + list(_WINGS)


def __getattr__(name: str) -> Any:
    """Import a public name (or a wing) on first use, and keep it here."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _WINGS:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
