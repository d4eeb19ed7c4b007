"""Each metrics.jsonl line's latent-site figures: diagnose's own collapse measures on the
validation images, at most LATENT_RECORDS times a fit, without touching the fit's draws."""

from __future__ import annotations

import json
from dataclasses import replace

import pyro

from pyro_vae.config import RunConfig, TrainConfig
from pyro_vae.diagnostics import posterior_collapse
from pyro_vae.programs import unit_seed
from pyro_vae.runs import latents, load_run
from pyro_vae.runs.latents import DRAWS, epoch_extras
from pyro_vae.state import EpochRecord

from support import reference_fit, same_result, train_tiny


def test_the_last_line_carries_the_checkpoints_kl_and_active_units(tmp_path):
    run = train_tiny(tmp_path, "t")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    loaded = load_run(run)
    x = loaded.data.eval_split("val", seed=0)
    pyro.set_rng_seed(unit_seed(0, "latents-2"))
    site = posterior_collapse(loaded.model, loaded.guide, x, loaded.data.val.fields(),
                              DRAWS).sites["z"]
    assert abs(last["kl_z"] - site.kl_total) < 1e-6
    assert last["active_units_z"] == int(site.active.sum())
    # the extra measurement leaves the fit's random stream alone: the same as an in-process fit
    same_result(run, reference_fit(loaded.config))


def test_at_most_latent_records_lines_carry_them(monkeypatch):
    calls = []
    monkeypatch.setattr(latents, "latent_metrics", lambda s, seed, epoch: calls.append(epoch) or {})
    cfg = replace(RunConfig(), train=TrainConfig(epochs=350))
    extras = epoch_extras(object(), cfg)
    for epoch in range(1, 351):
        val = None if epoch % 2 else -1.0  # validation every other epoch
        extras(None, EpochRecord(epoch, -1.0, val, 0.1, 1.0, 1.0))
    assert calls == [e for e in range(6, 349, 6)] + [350] and len(calls) <= latents.LATENT_RECORDS

