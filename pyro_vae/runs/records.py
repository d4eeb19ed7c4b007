"""What a run folder records about its checkpoints: the best one (``best.safetensors``), which
checkpoint a score was computed from, and the scores a resumed fit makes stale.

.. code-block:: text

    runs/<name>/best.safetensors      the parameters at the best validation ELBO so far
    runs/<name>/stale/epoch-<N>/      evaluate's and diagnose's files for epoch N, moved aside
                                      by train --resume
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from torch import nn

from pyro_vae import figures
from pyro_vae.data import Data
from pyro_vae.evaluation import classifier_figures
from pyro_vae.explore import EXPLORER_FILE, NoRealLatentError, real_sites, write_explorer
from pyro_vae.files import atomic_write
from pyro_vae.infer import FitResult
from pyro_vae.programs import seeded
from pyro_vae.runs.checkpoint import Checkpoint
from pyro_vae.runs.lock import LOCK_FILE
from pyro_vae.runs.tracking import TRACKING
from pyro_vae.state import EpochRecord, TrainState
from pyro_vae.traces import is_real, latent_sites, slice_rows

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.safetensors"
STORY_COPY, GUIDE_COPY, SUMMARY = "story.py", "guide.py", "summary.json"
EVALUATION_PARTIAL, DIAGNOSIS_PARTIAL = "evaluation.partial", "diagnostics.partial"
"""Where evaluate and diagnose keep their finished chunks until the whole is written."""
BEST = "best.safetensors"
WHICH = {"last": CHECKPOINT, "best": BEST}
"""The checkpoints a run folder may hold, by the name ``--checkpoint`` gives them."""

STALE = "stale"
# The files evaluate, diagnose and sample write beside the checkpoint they scored (names or
# glob patterns), and the JSON of each that records the epoch it was for.
SCORES = {"evaluation": ("evaluation.json", ("evaluation.json", "evaluation_k_curve.png",
                                             "evaluation_khat.png")),
          "diagnose": ("diagnostics.json", ("diagnostics.json", "diagnostics.nc",
                                            "diagnostics.html", "diagnose_gaps.png",
                                            "diagnose_collapse.png", "diagnose_pixel_maps.png",
                                            "diagnose_loglik.png", "diagnose_pairs.png",
                                            "diagnose_discrete_*.png", "classifier.json")),
          "sample": ("", ("samples.png",))}
# What a run folder needs to load, resume and report: a command's --out never replaces one.
RECORDS = (CONFIG, METRICS, *WHICH.values(), STORY_COPY, GUIDE_COPY, LOCK_FILE, TRACKING, SUMMARY,
           *(scored for scored, _ in SCORES.values() if scored), "diagnostics.nc",
           "classifier.json")
KEPT_FOLDERS = (STALE, EVALUATION_PARTIAL, DIAGNOSIS_PARTIAL)


def check_out_file(run: Path, out: Path | None, flag: str = "--out") -> None:
    """Refuse an ``out`` that would overwrite one of run folder ``run``'s records.

    A page or a picture written over ``config.json`` (say) exits 0 and leaves a folder that no
    longer loads; this says so first, as a ``ValueError`` naming the file.
    """
    if out is None:
        return
    run, out = Path(run).resolve(), Path(out).resolve()
    kept = [run / name for name in KEPT_FOLDERS]
    if (out.parent == run and out.name in RECORDS) or any(k in out.parents for k in kept):
        raise ValueError(f"{flag} {out}: that is a record of the run folder {run}, which "
                         "would no longer load or resume; choose another file")


def is_new_best(state: TrainState, record: EpochRecord) -> bool:
    """True when ``record``'s validation ELBO is the fit's best so far (the fit has just
    counted it: it equals ``state.best_val`` and no epoch since has been worse)."""
    return record.val_elbo is not None and record.val_elbo == state.best_val \
        and state.bad_epochs == 0


def scored(which: str, ckpt: Checkpoint) -> dict:
    """The ``scored`` block of evaluation.json and diagnostics.json: which checkpoint, the
    epochs it had finished (and the step within the next, if it was interrupted), its digest."""
    out = {"checkpoint": which, "epoch": ckpt.state.epoch, "sha256": ckpt.digest}
    if ckpt.state.step:
        out["step"] = ckpt.state.step
    return out


def _recorded_epoch(path: Path) -> int | None:
    try:
        entry = json.loads(path.read_text())["scored"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if isinstance(entry, int) else None


def move_stale(folder: Path, epoch: int) -> str | None:
    """Move the scores of earlier checkpoints into ``stale/epoch-<N>/`` before a resumed fit
    replaces the checkpoint they were computed from; N is the epoch each recorded, or for a
    record written before pyro-vae recorded it, ``<epoch>-or-earlier`` (the checkpoint being
    resumed is the newest it can be for). One line saying what moved where, or ``None``."""
    folder = Path(folder)
    moved: dict[str, list[str]] = {}
    for record, names in SCORES.values():
        present = sorted({p.name for n in names for p in folder.glob(n) if p.is_file()})
        if not present:
            continue
        found = _recorded_epoch(folder / record) if record else None
        where = f"epoch-{found}" if found is not None else f"epoch-{epoch}-or-earlier"
        target = folder / STALE / where
        target.mkdir(parents=True, exist_ok=True)
        for name in present:
            os.replace(folder / name, target / name)
        moved.setdefault(f"{STALE}/{where}", []).extend(present)
    if not moved:
        return None
    parts = "; ".join(f"{', '.join(names)} into {folder / where}/" for where, names in moved.items())
    return f"moved the scores of an earlier checkpoint aside (the fit replaces it): {parts}"


def write_summary(path: Path, result: FitResult) -> None:
    """``summary.json``: the figures a person looks for first."""
    last = result.history[-1] if result.history else None
    summary = {
        "epochs": len(result.history),
        "final_train_elbo": last.train_elbo if last else None,
        "final_val_elbo": last.val_elbo if last else None,
        "best_val_elbo": result.best_val_elbo if result.history else None,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "seconds": result.seconds,
        "mean_epoch_seconds": (sum(r.seconds for r in result.history) / len(result.history)
                               if result.history else None),
    }
    if result.compiled_step is not None:  # did the whole-step program run, or why not
        summary["compiled_step"] = result.compiled_step
    atomic_write(path / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())


def write_figures(path: Path, model: nn.Module, guide: nn.Module, data: Data,
                  history: list[EpochRecord], seed: int, map_site: str | None = None) -> list[Path]:
    """The run's PNGs: ELBO curves, reconstructions, prior samples, the latent map of the
    guide's first latent site (or ``map_site``), the manifold when the story's only latent is
    2-D and real, and whatever the story's own ``figures(guide, x, batch, image_shape,
    folder)`` method draws, if it has one; then ``explorer.html`` of the same site (of the
    first real-valued one if that is not), or a line on stderr saying why there is none."""
    x_test, batch = data.eval_split("test", seed=seed), data.test.fields()
    shape = data.image_shape
    with seeded(seed):
        out = [figures.elbo_curves(history, path / "elbo_curves.png"),
               figures.reconstructions(model, guide, x_test, shape, path / "reconstructions.png",
                                       batch=batch),
               figures.prior_samples(model, x_test, shape, path / "prior_samples.png", batch=batch),
               figures.latent_map(guide, x_test[:2000], _labels(data.test, 2000),
                                  path / "latent_map.png", site=map_site or None,
                                  batch=slice_rows(batch, 0, 2000))]
        sites = latent_sites(model, x_test[:2], slice_rows(batch, 0, 2), who="the manifold figure")
        if len(sites) == 1 and sites[0].event_shape == (2,) and is_real(sites[0].support):
            out.append(figures.manifold(model, sites[0].name, x_test, shape, path / "manifold.png",
                                        batch=batch))
        # A story may draw pictures of its own (e.g. the regions of a per-class prior).
        own = getattr(model, "figures", None)
        if callable(own):
            out += list(own(guide, x_test, batch, shape, path))
        out += classifier_figures(model, guide, data, seed, path)
    return out + explorer(path, model, guide, data, seed, map_site, len(history))


def explorer(path: Path, model: nn.Module, guide: nn.Module, data: Data, seed: int,
             map_site: str | None, epochs: int) -> list[Path]:
    """``explorer.html`` in the run folder, or a note on stderr where the story has no
    real-valued latent site."""
    x, fields = data.eval_split("test", seed=seed)[:2], slice_rows(data.test.fields(), 0, 2)
    site = map_site if map_site and map_site in real_sites(model, x, fields) else None
    try:
        page = write_explorer(model, guide, data, path / EXPLORER_FILE, site=site, seed=seed,
                              caption=f"{path} · epoch {epochs} · {data.source}")
    except NoRealLatentError as err:
        print(f"note: {err}", file=sys.stderr)
        return []
    return [page.path]


def _labels(split, n: int):
    return None if split.labels is None else split.labels[:n]


def epoch_lines(path: Path) -> dict[int, tuple[dict, str]]:
    """metrics.jsonl's whole lines by epoch, parsed and as written (a torn or foreign line
    is skipped; a later line for an epoch wins); empty where there is no file."""
    lines: dict[int, tuple[dict, str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
                lines[entry["epoch"]] = (entry, line)
    return lines


def metrics_matching(path: Path, history: list[EpochRecord]) -> str:
    """The lines of metrics.jsonl for exactly the checkpoint's epochs ``history``: a line the
    file holds for an epoch is kept whole when it agrees with the checkpoint's record (it may
    carry more, e.g. a classifier's accuracy); any other epoch is written from its record."""
    lines = epoch_lines(path)
    out = []
    for record in history:
        fields = dataclasses.asdict(record)
        entry, line = lines.get(record.epoch, ({}, ""))
        agrees = all(entry.get(k) == v for k, v in fields.items())
        out.append((line if agrees else json.dumps(fields)) + "\n")
    return "".join(out)
