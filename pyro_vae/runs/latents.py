"""What each epoch's metrics.jsonl line adds to the ELBOs: the classifier's accuracy (a story
with a label site) and, per latent site, KL(q(z_s | x) ‖ p(z_s | parents)) and the active units
on the validation images, the figures a tracker plots to watch a posterior collapse.

.. code-block:: text

    kl_<site>            KL averaged over the first VALIDATION_ROWS validation images (nats)
    active_units_<site>  dimensions with Cov_x E_q[u_d] > 0.01 (Burda et al. 2016)

Both come from ``diagnose``'s own measure (:func:`pyro_vae.diagnostics.posterior_collapse`),
at most LATENT_RECORDS times a fit (on validation epochs spread over it, and the last), so a
long fit of a small model spends little on them.
"""

from __future__ import annotations

from typing import Callable

import pyro
import torch

from pyro_vae.config import RunConfig
from pyro_vae.diagnostics import posterior_collapse
from pyro_vae.evaluation import epoch_metrics
from pyro_vae.infer import FitSession
from pyro_vae.programs import cuda_devices, unit_seed
from pyro_vae.state import EpochRecord
from pyro_vae.traces import slice_rows

LATENT_RECORDS = 100
"""The most epochs of one fit whose lines carry the latent sites' KL and active units."""
VALIDATION_ROWS = 1000
"""Validation images they are measured on."""
DRAWS = 8
"""Guide draws per image (exact for a closed-form KL and mean; Monte Carlo otherwise)."""


def latent_metrics(session: FitSession, seed: int, epoch: int) -> dict[str, float]:
    """``{"kl_<site>": nats, "active_units_<site>": count}`` of every continuous latent site,
    from draws seeded by ``seed`` and ``epoch``; the fit's random stream is left as it was, so
    a resumed fit draws what an uninterrupted one does."""
    data = session.data
    with torch.random.fork_rng(devices=cuda_devices(session.device)):
        pyro.set_rng_seed(unit_seed(seed, f"latents-{epoch}"))
        x = data.eval_split("val", seed=seed)[:VALIDATION_ROWS]
        collapse = posterior_collapse(session.model, session.guide, x,
                                      slice_rows(data.val.fields(), 0, len(x)), DRAWS)
    out: dict[str, float] = {}
    for name, site in collapse.sites.items():
        out[f"kl_{name}"] = site.kl_total
        out[f"active_units_{name}"] = int(site.active.sum())
    return out


def epoch_extras(model: object, cfg: RunConfig) -> Callable[[FitSession, EpochRecord], dict]:
    """``extras(session, record)``: what the epoch's line adds to ``record`` (see above)."""
    classifier = epoch_metrics(model, cfg.train.seed)
    every = max(1, cfg.train.epochs // LATENT_RECORDS)
    measurable = True

    def extras(session: FitSession, record: EpochRecord) -> dict:
        nonlocal measurable
        out = classifier(session, record.epoch) if classifier is not None else {}
        if measurable and record.val_elbo is not None and (
                record.epoch % every == 0 or record.epoch == cfg.train.epochs):
            try:
                out |= latent_metrics(session, cfg.train.seed, record.epoch)
            except Exception:  # noqa: BLE001 - a story that cannot run vectorized draws
                # (diagnose says why, in one line) only loses these figures, never its fit
                measurable = False
        return out

    return extras
