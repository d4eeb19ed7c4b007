"""``pyro-vae diagnose RUN``: NUTS against the guide, inference gaps, collapse and predictive checks.

Each finished stage (NUTS, the local fit, the gaps, collapse, the predictive checks) is kept
in ``OUT/diagnostics.partial/`` with the settings it was made with; the same command (or it
with ``--resume``, which insists on those settings) continues from them, and the folder is
removed once the report is written."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pyro_vae.cli.common import (
    COMMANDS,
    HELP,
    Command,
    add_checkpoint_argument,
    add_memory_argument,
    add_resume_arguments,
    add_trust_argument,
    positive_int,
)
from pyro_vae.cli.partials import Job, interrupted, open_jobs, progress_flag
from pyro_vae.diagnostics import (
    MIN_DRAWS,
    DiagnoseConfig,
    active_units_text,
    check_diagnose_config,
    diagnose,
    write_diagnostics,
)
from pyro_vae.evaluation import write_classifier_report
from pyro_vae.memory import format_size, memory_budget
from pyro_vae.partial import state_digest, tensor_digest
from pyro_vae.runs import DIAGNOSIS_PARTIAL as PARTIAL
from pyro_vae.runs import load_run

C = DiagnoseConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    add_checkpoint_argument(p)
    add_trust_argument(p)
    p.add_argument("--points", type=positive_int, default=C.points,
                   help="held-out images whose posterior NUTS samples and whose gaps are measured")
    p.add_argument("--chains", type=positive_int, default=C.chains, help="NUTS chains")
    p.add_argument("--warmup", type=positive_int, default=C.warmup, help="NUTS warm-up iterations per chain")
    p.add_argument("--samples", type=positive_int, default=C.samples,
                   help=f"NUTS draws kept per chain (at least {MIN_DRAWS})")
    p.add_argument("--local-steps", type=positive_int, default=C.local_steps,
                   help="Adam steps of the per-image Gaussian fit")
    p.add_argument("--elbo-samples", type=positive_int, default=C.elbo_samples,
                   help="draws per image for the ELBO and IWAE estimates")
    p.add_argument("--seed", type=int, default=C.seed, help="random seed")
    p.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: RUN)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    add_memory_argument(p)
    add_resume_arguments(p, "diagnosis in OUT/diagnostics.partial")


def run(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(C, points=args.points, chains=args.chains, warmup=args.warmup,
                              samples=args.samples, local_steps=args.local_steps,
                              elbo_samples=args.elbo_samples, seed=args.seed)
    check_diagnose_config(cfg)  # before anything is loaded or written
    loaded = load_run(args.run, args.device, args.checkpoint, trust_story=args.trust_story)
    heldout = loaded.data.eval_split("test", seed=loaded.config.train.seed)
    out = args.out or loaded.path
    job = Job("", {"method": "diagnose", **dataclasses.asdict(cfg), "device": loaded.device.type,
                   "parameters": state_digest(loaded.model, loaded.guide),
                   "images": tensor_digest(heldout)})
    open_jobs([job], out / PARTIAL, args.resume, "diagnose")
    try:
        # The per-row extras (labels y) of the same rows: a conditional story reads them.
        result = diagnose(loaded.model, loaded.guide, heldout, cfg, progress=progress_flag(args),
                          batch=loaded.data.test.fields(), partial=job.partial,
                          labels=loaded.data.test.labels,
                          memory=memory_budget(loaded.device, args.memory_budget))
    except KeyboardInterrupt:
        return interrupted("diagnose", out / PARTIAL)
    written = write_diagnostics(result, out, loaded.data.image_shape, title=loaded.path.name,
                                scored=loaded.scored)
    s = result.summary()
    g = s["gaps"]
    print(f"max r̂ {s['nuts']['rhat_max']:.3f}; approximation gap {g['approximation_gap']:.2f} nats, "
          f"amortization gap {g['amortization_gap']:.2f} nats; active units "
          f"{active_units_text(s['collapse'])}", file=sys.stderr)
    for name, site in s["discrete"].items():
        shares = " ".join(f"{share:.0%}" for share in site["share_per_value"])
        print(f"{name}: share of images per value {shares}; mean entropy of q({name} | x) "
              f"{site['mean_entropy']:.2f} nats", file=sys.stderr)
    classifier = write_classifier_report(loaded.model, loaded.guide, loaded.data,
                                         loaded.config.train.seed, out)
    if classifier is not None:
        print(f"q(y | x) on {classifier['points']} test images: accuracy "
              f"{classifier['accuracy']:.4f}, expected calibration error "
              f"{classifier['expected_calibration_error']:.4f}", file=sys.stderr)
    m = s["memory"]
    print(f"memory: the NUTS draws {format_size(m['nuts_draws_bytes'])}, the gap table "
          f"{m['gap_particle_chunk']} draws of every point per call; about "
          f"{format_size(m['working_bytes_bound'])} of a {format_size(m['budget_bytes'])} budget "
          f"({m['budget_source']})", file=sys.stderr)
    job.partial.remove()  # the report is written: the stages are no longer needed
    print(written.html)
    return 0


COMMANDS.register("diagnose")(Command(HELP["diagnose"], add_arguments, run))
