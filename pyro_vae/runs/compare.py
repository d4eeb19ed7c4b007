"""Several run folders side by side: ``pyro-vae compare RUN... [--html]``.

One row per run: its story and parts, the settings in which the runs differ (only those),
epochs, training time, final and best validation ELBO, and where the folder has them
(``evaluation.json``, ``diagnostics.json``) the IWAE and AIS estimates of log p(x) with
their standard errors, the share of images whose PSIS k̂ exceeds 0.7, the approximation and
amortization gaps and the active units per latent site. A run without them has blank cells.

Everything is read from the folders' JSON files; no story code is imported, so any story
compares, trusted or not. Runs fitted to different data (or, where the config says, with
different likelihoods) are said to be not comparable and are not ranked; otherwise a rank by
best validation ELBO is given. The figure and the page are :mod:`~pyro_vae.runs.compare_page`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae.config import load_run_config
from pyro_vae.evaluation import evaluation_entries
from pyro_vae.runs.evaluations import (
                                        ReadEstimate,
                                        check_entries,
                                        choose_evaluations,
                                        from_entries,
                                        read_from_note,
)
from pyro_vae.stories import is_named, migrate_model_config, parse_spec

PARTS = ("prior", "likelihood", "decoder", "encoder", "guide")
# Settings shown in their own columns (story, parts, epochs), or that say where, not what.
NOT_OPTIONS = {"model.prior", "model.likelihood", "model.decoder", "model.encoder", "model.guide",
               "story.model", "story.guide", "story.model_source", "story.guide_source",
               "train.epochs", "data.root", "data.download",
               "track.loggers", "track.mlflow_uri"}  # where the records also went
# What two runs must share for their ELBOs to be the same quantity on the same images.
# A story's digest is shown only where it tells apart runs of stories of the same name.
DIGESTS = ("story.model_sha256", "story.guide_sha256")
SAME_DATA = ("data.name", "data.binarize", "data.val_fraction", "data.test_fraction",
             "data.split_seed", "image_shape")


@dataclass(frozen=True)
class RunRow:
    """What one run folder says about itself; ``None`` where it does not say."""

    path: Path
    name: str
    story: str
    parts: dict[str, str | None]
    settings: dict[str, Any]
    """Every setting of config.json, flattened (``train.lr``, ``model.options.prior.mixture.
    components``, ``story.args.latent_dim``, ...)."""
    epochs: int | None
    train_seconds: float | None
    """The training epochs' wall-clock seconds summed over metrics.jsonl (a resumed run's
    earlier fits included; validation passes not)."""
    fit_seconds: float | None
    """summary.json's seconds: the wall time of the last train or --resume."""
    final_val_elbo: float | None
    best_val_elbo: float | None
    curve: tuple[tuple[int, float], ...]
    """(epoch, validation ELBO) of every epoch that was validated."""
    evaluated_on: str | None = None
    """Images and draws of evaluation.json, e.g. ``100 test, K=5000, T=1000, C=16``."""
    evaluated_images: str | None = None
    """Just the images, e.g. ``100 test``."""
    iwae: ReadEstimate | None = None
    ais: ReadEstimate | None = None
    khat_share: float | None = None
    """Share of the evaluated images whose PSIS k̂ exceeds ``khat_threshold``."""
    khat_threshold: float | None = None
    approximation_gap: ReadEstimate | None = None
    amortization_gap: ReadEstimate | None = None
    diagnosed_on: str | None = None
    """Images of diagnostics.json's gaps, e.g. ``2 test``."""
    active_units: dict[str, tuple[int, int]] | None = None
    """Per latent site: (active units, dimensions)."""
    unreadable: tuple[str, ...] = ()
    evaluations: dict[str, dict] = field(default_factory=dict)
    """evaluation.json's entries by key (``iwae-test-N10000-K5000-seed0``); not in the JSON."""
    latest: dict[str, str] = field(default_factory=dict)
    """Per method, the key of the entry run last."""
    read_from: dict[str, str] = field(default_factory=dict)
    """Per method (``iwae``, ``ais``), the key of the entry its cells were read from
    (:func:`~pyro_vae.runs.evaluations.choose_evaluations`)."""


@dataclass(frozen=True)
class Comparison:
    """The runs, the settings in which they differ, whether they can be ranked, and why not."""

    runs: list[RunRow]
    differing: list[str]
    """Flattened setting names (keys of :attr:`RunRow.settings`) whose values differ."""
    comparable: bool
    notes: list[str] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    """1 for the highest best validation ELBO; all ``None`` when not comparable."""
    why_not: list[str] = field(default_factory=list)
    """Short reasons they are not comparable (``different data``, ``different likelihoods``)."""
    common: tuple[float | None, ...] = ()
    """Per run, its mean validation ELBO over the window of epochs that every run reached
    (:func:`common_window`); empty when the runs validated the same epochs to the end."""

    def columns(self) -> list[str]:
        """The table's columns: those with something in them."""
        return [c for c in _all_columns(self) if any(v != "" for v in self._column(c))]

    def groups(self) -> list[str]:
        """For each of :meth:`columns`, the part of the story it tells (``fit``, ``settings
        that differ``, ``training``, ``evaluate``, ``diagnose``)."""
        options = {label(k) for k in self.differing}
        return [next(g for g, cols in GROUPS if c in cols) if c not in options
                else "settings that differ" for c in self.columns()]

    def table(self) -> list[list[str]]:
        """The table's cells, one row per run (blank where a run has no value)."""
        cols = self.columns()
        cells = {c: self._column(c) for c in cols}
        return [[cells[c][i] for c in cols] for i in range(len(self.runs))]

    def text(self) -> str:
        """The table as plain text, with the notes below it."""
        header, rows = self.columns(), self.table()
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
        return "\n".join(out + [""] + self.notes)

    def to_json(self) -> dict[str, Any]:
        runs = []
        for row, rank in zip(self.runs, self.ranks):
            entry = {k: _plain(v) for k, v in dataclasses.asdict(row).items()
                     if k not in ("settings", "curve", "evaluations")}
            entry["options"] = {label(k): row.settings.get(k) for k in self.differing}
            entry["rank"] = rank
            entry["val_elbo_curve"] = {"epoch": [e for e, _ in row.curve],
                                       "val_elbo": [v for _, v in row.curve]}
            runs.append(entry)
        return {"comparable": self.comparable, "not_comparable_because": self.why_not,
                "notes": self.notes,
                "differing_options": [label(k) for k in self.differing],
                "columns": self.columns(), "table": self.table(), "runs": runs}

    def _column(self, column: str) -> list[str]:
        return [_cell(self, i, column) for i in range(len(self.runs))]


def compare_runs(paths: list[Path]) -> Comparison:
    """Read the run folders ``paths`` (in this order) and compare them.

    Raises:
        ValueError: a path is not a run folder (one line naming it).
    """
    if not paths:
        raise ValueError("give at least one run folder")
    runs = [read_run(Path(p)) for p in paths]
    chosen = choose_evaluations([r.evaluations for r in runs])
    runs = [_with_evaluation(r, keys) for r, keys in zip(runs, chosen)]
    keys = sorted({k for r in runs for k in r.settings} - NOT_OPTIONS)
    differing = [k for k in keys if len({json.dumps(r.settings.get(k)) for r in runs}) > 1
                 and (k not in DIGESTS or _same_name_other_code(runs, k))]
    notes, why_not = _comparability(runs)
    comparable = not why_not
    ranks: list[int | None] = [None] * len(runs)
    if comparable and len(runs) > 1:
        scored = sorted((i for i, r in enumerate(runs) if r.best_val_elbo is not None),
                        key=lambda i: -runs[i].best_val_elbo)  # type: ignore[operator]
        for rank, i in enumerate(scored, 1):
            ranks[i] = rank
        notes.append("rank: by best validation ELBO (nats per image, higher is better)")
    notes += _evaluation_notes(runs)
    notes += [n for r in runs for n in read_from_note(r.name, r.read_from, r.latest)]
    common: tuple[float | None, ...] = ()
    window = common_window(runs)
    if window is not None:
        common = tuple(_window_mean(r.curve, window) for r in runs)
        notes.append(f"val ELBO, common epochs: each run's mean validation ELBO over epochs "
                     f"{window[0]}–{window[1]}, the last {WINDOW} that every run reached, so "
                     f"runs stopped at different epochs are read at the same ones")
    notes += [f"{r.name}: {what} could not be read, left blank" for r in runs for what in r.unreadable]
    return Comparison(runs, differing, comparable, notes, ranks, why_not, common)


WINDOW = 10
"""Epochs averaged for the common-epochs column: one epoch's validation ELBO is a noisy
single-draw estimate, and ten of them read a curve's level rather than one draw."""


def common_window(runs: list[RunRow]) -> tuple[int, int] | None:
    """``(first, last)`` epoch of the :data:`WINDOW` epochs up to the last epoch every run
    validated, where the runs stopped at different epochs; ``None`` where they stopped at
    the same one, there are fewer than two runs, or a run has no curve."""
    ends = [r.curve[-1][0] for r in runs if r.curve]
    if len(ends) < 2 or len(set(ends)) == 1 or len(ends) < len(runs):
        return None
    last = min(ends)
    return max(1, last - WINDOW + 1), last


def _window_mean(curve: tuple[tuple[int, float], ...], window: tuple[int, int]) -> float | None:
    values = [v for e, v in curve if window[0] <= e <= window[1]]
    return sum(values) / len(values) if values else None


def _same_name_other_code(runs: list[RunRow], key: str) -> bool:
    """Whether two runs name the same story (or guide) file but hold different code."""
    column = "story" if key == "story.model_sha256" else "guide"
    seen: dict[str, set] = {}
    for r in runs:
        name = r.story if column == "story" else r.parts.get("guide")
        seen.setdefault(str(name), set()).add(r.settings.get(key))
    return any(len(digests) > 1 for digests in seen.values())


def read_run(path: Path) -> RunRow:
    """One run folder's row; blank (``None``) where a file is missing.

    Raises:
        ValueError: ``path`` is not a run folder.
    """
    if not path.is_dir():
        raise ValueError(f"{path}: no such run folder")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a pyro-vae run folder (it has no config.json)")
    cfg = load_run_config(path / "config.json", migrate_model_config)
    settings = flatten(dataclasses.asdict(cfg))
    unreadable: list[str] = []
    summary = _json(path / "summary.json", unreadable) or {}
    metrics = _metrics(path / "metrics.jsonl", unreadable)
    curve = tuple((int(m["epoch"]), float(m["val_elbo"])) for m in metrics
                  if isinstance(m.get("val_elbo"), (int, float)))
    vals = [v for _, v in curve]
    row = RunRow(
        path=path, name=path.name, story=_story(cfg.story), parts=_parts(cfg),
        settings=settings,
        epochs=len(metrics) if metrics else summary.get("epochs"),
        train_seconds=sum(float(m.get("seconds", 0.0)) for m in metrics) if metrics else None,
        fit_seconds=summary.get("seconds"),
        final_val_elbo=vals[-1] if vals else summary.get("final_val_elbo"),
        best_val_elbo=max(vals) if vals else summary.get("best_val_elbo"),
        curve=curve)
    evaluation = _json(path / "evaluation.json", unreadable)
    diagnostics = _json(path / "diagnostics.json", unreadable)
    try:
        found = evaluation_entries(evaluation) if evaluation is not None else {}
        row = dataclasses.replace(row, evaluations=found.get("entries", {}),
                                  latest=found.get("latest", {}), **_from_diagnostics(diagnostics))
        check_entries(row.evaluations)  # an entry of another shape: said here, once
    except (KeyError, TypeError, ValueError):  # a file of another shape: blank, said once
        row = dataclasses.replace(row, evaluations={}, latest={})
        unreadable.append("evaluation.json or diagnostics.json (unexpected contents)")
    row = _with_evaluation(row, choose_evaluations([row.evaluations])[0])
    return dataclasses.replace(row, unreadable=tuple(unreadable))


def _with_evaluation(row: RunRow, keys: dict[str, str]) -> RunRow:
    """``row`` with its IWAE, AIS and k̂ cells read from the entries ``keys`` names."""
    iwae = row.evaluations.get(keys.get("iwae", ""))
    ais = row.evaluations.get(keys.get("ais", ""))
    return dataclasses.replace(row, **from_entries(iwae, ais), read_from=dict(keys))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif not (isinstance(value, dict) and not value):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def label(key: str) -> str:
    """A flattened setting as a column header: ``train.lr`` → ``lr``,
    ``model.options.prior.mixture.components`` → ``prior.mixture.components``,
    ``story.args.latent_dim`` → ``model-arg latent_dim``, ``data.name`` → ``data``."""
    for prefix, short in (("model.options.", ""), ("story.args.", "model-arg "),
                          ("story.model_sha256", "story sha256"),
                          ("story.guide_sha256", "guide sha256"), ("data.name", "data")):
        if key.startswith(prefix):
            return short + key[len(prefix):]
    return key.split(".", 1)[-1] if key.split(".")[0] in ("model", "train", "data", "story") else key


def _json(path: Path, unreadable: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        unreadable.append(path.name)
        return None
    if not isinstance(value, dict):
        unreadable.append(path.name)
        return None
    return value


def _metrics(path: Path, unreadable: list[str]) -> list[dict]:
    """metrics.jsonl's epochs (a later line for an epoch wins, as ``--resume`` reads it)."""
    if not path.is_file():
        return []
    epochs: dict[int, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        unreadable.append(path.name)
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
            epochs[entry["epoch"]] = entry
    return [epochs[e] for e in sorted(epochs)]


def _story(story) -> str:
    if not story.model:
        return "VAE"
    if is_named(story.model):
        return story.model
    name = parse_spec(story.model)[1]
    source = Path(story.model_source).name if story.model_source else parse_spec(story.model)[0].name
    return f"{source}:{name}"


def _parts(cfg) -> dict[str, str | None]:
    """The registered parts a run was built from; ``None`` where the story does not use one
    (a story file builds its own; a shipped story has its own prior)."""
    story = cfg.story
    guide = story.guide if story.model else cfg.model.guide
    if ":" in guide:
        path, name = parse_spec(guide, "--guide")
        guide = f"{Path(story.guide_source).name if story.guide_source else path.name}:{name}"
    if not story.model:
        return {p: getattr(cfg.model, p) for p in PARTS[:-1]} | {"guide": guide}
    if is_named(story.model):
        return {"prior": None, "likelihood": cfg.model.likelihood, "decoder": cfg.model.decoder,
                "encoder": cfg.model.encoder, "guide": guide}
    return {"prior": None, "likelihood": None, "decoder": None, "encoder": None, "guide": guide}


def _from_diagnostics(d: dict | None) -> dict[str, Any]:
    if d is None:
        return {}
    out: dict[str, Any] = {}
    g = d.get("gaps")
    if g is not None:
        n = len(d.get("points", [])) or None
        how = f"{n} test" if n else ""
        out["approximation_gap"] = ReadEstimate(float(g["approximation_gap"]),
                                            float(g.get("approximation_gap_se", float("nan"))), how)
        out["amortization_gap"] = ReadEstimate(float(g["amortization_gap"]),
                                           float(g.get("amortization_gap_se", float("nan"))), how)
        out["diagnosed_on"] = how or None
    c = d.get("collapse")
    if c is not None:
        sites = c.get("sites") or {"z": {"active_units": c["active_units"], "dim": c["latent_dim"]}}
        out["active_units"] = {s: (int(v["active_units"]), int(v["dim"])) for s, v in sites.items()}
    return out


def _comparability(runs: list[RunRow]) -> tuple[list[str], list[str]]:
    """Notes on what keeps the runs' ELBOs from being the same quantity, and short reasons."""
    notes, why = [], []
    data = [k for k in SAME_DATA if len({json.dumps(r.settings.get(k)) for r in runs}) > 1]
    if data:
        values = "; ".join(f"{label(k)}: " + ", ".join(f"{_value(r.settings.get(k))} ({r.name})"
                                                       for r in runs) for k in data)
        notes.append(f"not comparable: the runs fit different data ({values}); their ELBOs are "
                     f"of different images and are not ranked")
        why.append("different data")
    known = {r.parts["likelihood"] for r in runs if r.parts.get("likelihood")}
    if len(known) > 1:
        notes.append(f"not comparable: the likelihoods differ ({', '.join(sorted(known))}), so the "
                     f"ELBOs score the pixels differently (probabilities against densities, or "
                     f"other pixels); they are not ranked")
        why.append("different likelihoods")
    return notes, why


def _evaluation_notes(runs: list[RunRow]) -> list[str]:
    done = [r for r in runs if r.evaluated_images]
    if len({(r.evaluated_images, r.iwae.how if r.iwae else None) for r in done}) > 1:
        return ["the IWAE bounds were computed on different images or with different K ("
                + "; ".join(f"{r.name}: {r.evaluated_images}" + (f", {r.iwae.how}" if r.iwae else "")
                            for r in done) + "): compare them with care"]
    return []


GROUPS = (("run", ("run", "story", *PARTS)),
          ("training", ("epochs", "train s", "final val ELBO", "best val ELBO",
                        "val ELBO, common epochs", "rank")),
          ("evaluate: log p(x)", ("evaluated on", "IWAE", "AIS", "k̂ > 0.7")),
          ("diagnose", ("diagnosed on", "approx. gap", "amort. gap", "active units")))


def _all_columns(c: Comparison) -> list[str]:
    first, *rest = (list(cols) for _, cols in GROUPS)
    return first + [label(k) for k in c.differing] + [col for cols in rest for col in cols]


def _cell(c: Comparison, i: int, column: str) -> str:
    r = c.runs[i]
    fixed = {
        "run": r.name, "story": r.story, "epochs": "" if r.epochs is None else str(r.epochs),
        "train s": "" if r.train_seconds is None else f"{r.train_seconds:.1f}",
        "final val ELBO": _num(r.final_val_elbo), "best val ELBO": _num(r.best_val_elbo),
        "val ELBO, common epochs": _num(c.common[i]) if c.common else "",
        "rank": "" if not c.ranks or c.ranks[i] is None else str(c.ranks[i]),
        "evaluated on": r.evaluated_on or "",
        "IWAE": _pm(r.iwae), "AIS": _pm(r.ais),
        "k̂ > 0.7": "" if r.khat_share is None else f"{100 * r.khat_share:.1f}%",
        "diagnosed on": r.diagnosed_on or "",
        "approx. gap": _pm(r.approximation_gap), "amort. gap": _pm(r.amortization_gap),
        "active units": ", ".join(f"{s} {a}/{d}" for s, (a, d) in (r.active_units or {}).items()),
    }
    if column in fixed:
        return fixed[column]
    if column in PARTS:
        return r.parts.get(column) or ""
    key = next(k for k in c.differing if label(k) == column)
    return _value(r.settings[key]) if key in r.settings else ""


def _pm(estimate: ReadEstimate | None) -> str:
    return "" if estimate is None else f"{estimate.mean:.2f} ± {estimate.stderr:.2f}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _value(value: Any) -> str:
    """A setting as a cell: lists comma-joined, None as ``none``, digests shortened."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    if isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value):
        return value[:12]
    return str(value)


def _plain(value: Any) -> Any:
    """A dataclass field as JSON: paths as strings, estimates as objects."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
