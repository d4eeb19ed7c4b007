"""Semi-supervised stories: which labels a fit keeps, and how well the guide classifies
(accuracy, confusion and calibration of q(y | x)).

A story whose label is a discrete latent (M2) says so with ``partly_labelled = True`` and
names the site in ``label_site``; the guide's distribution at that site, read from a trace
with the labels hidden, is the classifier. Nothing here knows one story's networks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from pyro_vae.data import Data, Split
from pyro_vae.figures import save_figure
from pyro_vae.files import atomic_write
from pyro_vae.programs import Batch, seeded, unit_seed
from pyro_vae.traces import is_latent, slice_rows, support_probs, trace_program


def partly_labelled(model: object) -> bool:
    """Whether a story takes rows whose label is hidden (``y == UNKNOWN_LABEL``)."""
    return getattr(model, "partly_labelled", False) is True


def balanced_rows(labels: Tensor, n: int, seed: int) -> Tensor:
    """``n`` row indices of ``labels`` ``[N]``, as even across the classes as n allows (the
    first n mod K classes get one more), drawn without replacement by ``seed``."""
    classes = torch.unique(labels)
    if not 0 < n <= len(labels):
        raise ValueError(f"--labels {n}: the training split has {len(labels)} labelled images; "
                         f"keep between 1 and {len(labels)}")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for i, k in enumerate(classes.tolist()):
        rows = torch.nonzero(labels == k).flatten()
        want = n // len(classes) + (i < n % len(classes))
        if want > len(rows):
            raise ValueError(f"--labels {n}: class {k} has only {len(rows)} training images, "
                             f"fewer than the {want} a balanced choice needs")
        picked.append(rows[torch.randperm(len(rows), generator=gen)[:want]])
    return torch.cat(picked).sort().values


def keep_labels(data: Data, n: int | None, seed: int) -> Data:
    """``data`` with the labels hidden except ``n`` balanced training rows (all training
    rows when ``n`` is None); validation and test labels are always hidden, so that their
    ELBO and log p(x) score the images alone. The true labels stay in ``Split.labels``."""
    if data.train.labels is None:
        raise ValueError("--labels: the data has no labels to keep (a semi-supervised story "
                         "needs a labelled dataset)")
    known = torch.ones(len(data.train), dtype=torch.bool)
    if n is not None:
        known = torch.zeros_like(known)
        known[balanced_rows(data.train.labels.cpu(), n, seed)] = True
    train = Split(data.train.x, data.train.labels, known.to(data.train.x.device))
    val, test = (Split(s.x, s.labels, torch.zeros(len(s), dtype=torch.bool, device=s.x.device))
                 for s in (data.val, data.test))
    return dataclasses.replace(data, train=train, val=val, test=test)


def label_site(model: object) -> str | None:
    """The site a story declares as its label (``label_site``), or ``None``."""
    site = getattr(model, "label_site", None)
    return site if isinstance(site, str) else None


LABEL_DRAWS = 8
"""Guide draws averaged into q(y | x) when its q(y | ·) reads a latent drawn before the label
site (as m1m2 with ``draws`` does): a Monte Carlo estimate of the marginal
∫ q(y | u, x) q(u | x) du. A guide whose label site comes first needs one trace, and one
whose second trace gives the same q(y | ·) (it reads no draw) needs two."""


@torch.no_grad()
def label_probs(guide: Callable, x: Tensor, batch: Batch, site: str,
                chunk: int = 2048) -> Tensor:
    """q(site | x) of every row: ``[N, K]`` for x ``[N, D]``, from the guide's trace (the
    per-row fields in ``batch`` sliced with x; hide the labels there to classify). Where the
    guide draws latents before ``site``, the mean over LABEL_DRAWS traces."""
    out = []
    for lo in range(0, len(x), chunk):
        rows, fields = x[lo:lo + chunk], slice_rows(batch, lo, lo + chunk)
        trace = trace_program(guide, rows, fields)
        probs = _site_probs(trace, site)  # [n, K]
        if _drawn_before(trace, site):
            again = _site_probs(trace_program(guide, rows, fields), site)
            if not torch.equal(probs, again):  # q(y | ·) reads the draw
                probs = torch.stack([probs, again] + [
                    _site_probs(trace_program(guide, rows, fields), site)
                    for _ in range(LABEL_DRAWS - 2)]).mean(0)
        out.append(probs)
    return torch.cat(out)


def _site_probs(trace, site: str) -> Tensor:
    """The label site's probabilities ``[n, K]`` in a guide trace (a clear error without it)."""
    if site not in trace.nodes:
        latents = [n for n, s in trace.nodes.items() if is_latent(s)]
        raise ValueError(f"label site {site!r}: the story classifies by the guide's "
                         f"q({site} | x), and this guide has no site {site!r} (its latent "
                         f"sites: {', '.join(latents)}); use the story's own guide")
    return support_probs(trace.nodes[site]["fn"])


def _drawn_before(trace, site: str) -> bool:
    """Whether the guide drew a latent before ``site`` (trace order is program order)."""
    for name, node in trace.nodes.items():
        if name == site:
            return False
        if is_latent(node):
            return True
    return False


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """The share of rows whose most probable class is the label: probs ``[N, K]``, labels ``[N]``."""
    return float((probs.argmax(-1) == labels).double().mean())


def confusion(probs: Tensor, labels: Tensor) -> np.ndarray:
    """Counts ``[K, K]``: row = true class, column = predicted class."""
    k = probs.shape[-1]
    flat = labels.long().cpu() * k + probs.argmax(-1).cpu()
    return torch.bincount(flat, minlength=k * k).reshape(k, k).numpy()


@dataclass(frozen=True)
class Calibration:
    """A reliability table: per confidence bin, the mean confidence, the accuracy and the
    count; ``ece`` = Σ_b (n_b / N) |acc_b − conf_b| (expected calibration error)."""

    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]
    ece: float


def calibration(probs: Tensor, labels: Tensor, bins: int = 15) -> Calibration:
    """The reliability of the top-class probability in ``bins`` equal-width bins over [0, 1]."""
    conf, pred = probs.max(-1)
    hit = (pred == labels).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    count = torch.bincount(which, minlength=bins)
    conf_sum = torch.bincount(which, weights=conf.double(), minlength=bins)
    hit_sum = torch.bincount(which, weights=hit, minlength=bins)
    n = max(len(labels), 1)
    ece = float(((hit_sum - conf_sum).abs()).sum() / n)
    mean = lambda s, c: None if c == 0 else float(s / c)  # noqa: E731
    return Calibration([i / bins for i in range(bins + 1)],
                       [mean(s, c) for s, c in zip(conf_sum, count)],
                       [mean(s, c) for s, c in zip(hit_sum, count)], count.tolist(), ece)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> Path:
    """A heat map of ``matrix`` ``[K, K]`` (rows: truth) with each cell's count."""
    from matplotlib.figure import Figure

    k = matrix.shape[0]
    fig = Figure(figsize=(6.5, 5.8))
    ax = fig.add_subplot()
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted (argmax q(y | x))",
           ylabel="true label")
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)
    return path


def plot_reliability(cal: Calibration, path: Path, title: str) -> Path:
    """Accuracy against confidence per bin, beside the diagonal of perfect calibration."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    mids = [(a + b) / 2 for a, b in zip(cal.edges, cal.edges[1:])]
    width = cal.edges[1] - cal.edges[0]
    shown = [(m, a) for m, a in zip(mids, cal.accuracy) if a is not None]
    ax.bar([m for m, _ in shown], [a for _, a in shown], width=width * 0.9, alpha=0.7,
           edgecolor="black", label="accuracy in the bin")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max q(y | x))", ylabel="accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\nexpected calibration error {cal.ece:.4f}", fontsize=9)
    save_figure(fig, path)
    return path


def scored_splits(model: object, guide: Callable, data: Data, seed: int,
                  names: tuple[str, ...] = ("val", "test")) -> dict[str, tuple[Tensor, Tensor]]:
    """For a story with a label site: per split, q(y | x) ``[N, K]`` with the labels hidden
    (the split's fields as the story sees them) and the true labels ``[N]``."""
    site = label_site(model)
    out = {}
    for name in names:
        split = getattr(data, name)
        if site is None or split.labels is None:
            continue
        probs = label_probs(guide, data.eval_split(name, seed=seed), split.fields(), site)
        out[name] = probs, split.labels
    return out


def epoch_metrics(model: object, seed: int) -> Callable | None:
    """For a story with a label site, ``metrics(session, epoch) -> {"val_accuracy",
    "test_accuracy"}`` (of argmax q(y | x), the labels hidden); ``None`` for any other story.
    The guide's draws come from a stream of their own, seeded by ``seed`` and the epoch, so
    scoring leaves the fit's random stream as it was: a fit draws the same whether or not,
    and however, it is scored."""
    if label_site(model) is None:
        return None

    def metrics(session, epoch: int) -> dict[str, float]:
        with seeded(unit_seed(seed, "labels", epoch), session.device):
            scored = scored_splits(session.model, session.guide, session.data, seed)
        return {f"{name}_accuracy": accuracy(*pair) for name, pair in scored.items()}

    return metrics


def classifier_figures(model: object, guide: Callable, data: Data, seed: int,
                       folder: Path) -> list[Path]:
    """``confusion.png`` and ``reliability.png`` of q(y | x) on the test split, for a story
    with a label site (none otherwise)."""
    scored = scored_splits(model, guide, data, seed, ("test",))
    if "test" not in scored:
        return []
    probs, labels = scored["test"]
    n, acc = len(labels), accuracy(probs, labels)
    return [plot_confusion(confusion(probs, labels), Path(folder) / "confusion.png",
                           f"q(y | x) on {n} test images: accuracy {acc:.4f}"),
            plot_reliability(calibration(probs, labels), Path(folder) / "reliability.png",
                             f"calibration of q(y | x) on {n} test images")]


def write_classifier_report(model: object, guide: Callable, data: Data, seed: int,
                            folder: Path) -> dict | None:
    """``classifier.json`` (test accuracy, expected calibration error, the reliability table)
    and ``reliability.png``/``confusion.png`` in ``folder``, for a story with a label site;
    ``None`` for any other story."""
    scored = scored_splits(model, guide, data, seed, ("test",))
    if "test" not in scored:
        return None
    probs, labels = scored["test"]
    cal = calibration(probs, labels)
    report = {"split": "test", "points": len(labels), "accuracy": accuracy(probs, labels),
              "expected_calibration_error": cal.ece, "reliability": dataclasses.asdict(cal),
              "confusion": confusion(probs, labels).tolist()}
    classifier_figures(model, guide, data, seed, folder)
    atomic_write(Path(folder) / "classifier.json", (json.dumps(report, indent=2) + "\n").encode())
    return report
