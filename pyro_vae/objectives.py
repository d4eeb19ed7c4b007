"""Training objectives: Pyro ELBO estimators, built from a :class:`TrainConfig`.

Every entry is one of Pyro's own losses; pyro-vae never hand-writes the ELBO.
Each builder returns an object with ``differentiable_loss(model, guide, *args)``.
"""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO

from pyro_vae.config import TrainConfig
from pyro_vae.registry import Registry

OBJECTIVES: Registry = Registry("objective")

# Latents sit in the single data plate; particles may add one more dimension.
MAX_PLATE_NESTING = 1


@OBJECTIVES.register("elbo")
def trace_elbo(cfg: TrainConfig) -> ELBO:
    """``Trace_ELBO``: the single-sample (or ``particles``-sample) reparameterized ELBO."""
    return Trace_ELBO(num_particles=cfg.particles, vectorize_particles=cfg.particles > 1,
                      max_plate_nesting=MAX_PLATE_NESTING)


def build_objective(cfg: TrainConfig) -> ELBO:
    return OBJECTIVES.lookup(cfg.objective)(cfg)
