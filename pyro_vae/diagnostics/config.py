"""How much work each diagnostic does, and the thresholds its verdicts use.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVE_THRESHOLD = 0.01


RHAT_OK = 1.01


PARTICLE_BUDGET = 4096
"""Draws × points per vectorized program call: about what keeps a CPU call cache-sized."""


@dataclass(frozen=True)
class DiagnoseConfig:
    """How much work each diagnostic does."""

    points: int = 16
    """N, held-out points whose posterior is sampled by NUTS and fitted locally."""
    chains: int = 4
    """NUTS chains (each started at a draw from the amortized guide)."""
    warmup: int = 300
    """NUTS warm-up (adaptation) iterations per chain."""
    samples: int = 300
    """NUTS draws kept per chain."""
    max_tree_depth: int = 8
    """NUTS trajectories stop at 2^depth leapfrog steps."""
    jit: bool = True
    """Compile NUTS's potential energy with the PyTorch JIT (about 2× faster on a CPU)."""
    local_steps: int = 600
    """Adam steps of the per-point (local) Gaussian fit."""
    local_lr: float = 0.05
    """Starting learning rate of that fit (cosine-decayed to zero)."""
    local_particles: int = 32
    """Draws of z per point in each local SVI step."""
    elbo_samples: int = 2000
    """K: draws per point for the ELBO and IWAE estimates of the gap table."""
    collapse_points: int = 2000
    """Held-out points for the KL per dimension and the active units."""
    collapse_draws: int = 32
    """Guide draws per point for the collapse measures (they average over the parents of
    each site, and are the Monte Carlo draws where a KL has no closed form)."""
    ppc_points: int = 1000
    """Held-out points for the posterior predictive checks."""
    seed: int = 0
    """Seeds the point selection and every random draw."""


MIN_DRAWS = 4
"""NUTS draws per chain that split R̂ needs (each half-chain of two draws has a variance)."""


def check_diagnose_config(cfg: DiagnoseConfig) -> None:
    """ValueError naming the first setting the diagnostics cannot run with."""
    for name in ("points", "chains", "warmup", "local_steps", "elbo_samples", "collapse_points",
                 "collapse_draws", "ppc_points", "local_particles", "max_tree_depth"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"diagnose: {name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.samples < MIN_DRAWS:
        raise ValueError(f"diagnose: --samples {cfg.samples} is too few NUTS draws per chain; "
                         f"split R-hat needs at least {MIN_DRAWS}")
