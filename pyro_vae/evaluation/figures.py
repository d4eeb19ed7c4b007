"""Figures of an evaluation: the estimates of log p(x) against K (the k-curve, with AIS
where it ran) and the PSIS k̂ of every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from pyro_vae.evaluation.estimates import ESTIMATORS, KCurve, PSISDiagnostics
from pyro_vae.figures import save_figure

LABELS = {"prior_mc": "prior Monte Carlo  log 1/K Σ p(x|z), z~p(z)",
          "elbo": "ELBO  1/K Σ log w, z~q(z|x)",
          "iwae": "IWAE  log 1/K Σ w, z~q(z|x)"}


# The zoomed panel leaves prior Monte Carlo out: it sits hundreds of nats below the guide's
# estimators on a trained model, which would flatten a half-nat IWAE–AIS gap to a line.
ZOOMED = ("elbo", "iwae")


def plot_k_curve(curve: KCurve, path: Path, exact: float | None = None,
                 ais: Sequence = (), entry: str | None = None) -> Path:
    """Each estimator's mean log p(x) (± 2 standard errors over points) against K, log-spaced;
    with ``ais`` (results of :func:`pyro_vae.evaluation.ais_curve`), AIS against T beside them.
    The left panel shows every estimator; the right one only the guide's (ELBO, IWAE) with AIS
    and the exact value, its y-axis fitted to them. ``entry`` names what is shown (the keys
    of ``evaluation.json`` entries) above the plot."""
    fig = Figure(figsize=(12, 4.8))
    whole, zoom = fig.subplots(1, 2)
    _draw_panel(whole, curve, ESTIMATORS, exact, ais)
    whole.set_title("every estimator (bands: ±2 s.e. over points)", fontsize=9)
    _draw_panel(zoom, curve, ZOOMED, exact, ais)
    zoom.set_ylim(*zoom_limits(curve, ZOOMED, exact, ais))
    # The bands are over images; the estimators score the same images, so the gaps between
    # them are known far better than the overlap of the bands suggests.
    zoom.set_title("zoomed: the guide's estimators" + (" and AIS" if ais else "")
                   + " (same images: their gaps are paired)", fontsize=9)
    fig.suptitle("estimates of log p(x) against K" + (", and AIS against T" if ais else ""))
    _name(fig, entry)
    save_figure(fig, path)
    return path


def _draw_panel(ax, curve: KCurve, names: Sequence[str], exact: float | None,
                ais: Sequence) -> None:
    """The curves of the estimators ``names``, then AIS and the exact value where given."""
    ks = np.asarray(curve.ks)
    against = " (against K)" if ais else ""
    for name in names:
        mean, low, high = _band(curve, name)
        line, = ax.plot(ks, mean, marker="o", ms=3, label=LABELS[name] + against,
                        color=f"C{ESTIMATORS.index(name)}")  # one colour per estimator
        ax.fill_between(ks, low, high, color=line.get_color(), alpha=0.15)
    if ais:
        _draw_ais(ax, ais)
    if exact is not None:
        ax.axhline(exact, color="black", ls="--", lw=1, label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("K (samples of z per data point)" + (" or T (AIS steps)" if ais else ""))
    ax.set_ylabel("mean log p(x) estimate (nats)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _band(curve: KCurve, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimator ``name``'s mean against K and its band of ± 2 standard errors."""
    mean, se = np.asarray(curve.mean[name]), np.asarray(curve.stderr[name])
    return mean, mean - 2 * se, mean + 2 * se


def zoom_limits(curve: KCurve, names: Sequence[str], exact: float | None,
                ais: Sequence) -> tuple[float, float]:
    """y-limits holding the zoomed curves' bands, AIS's and the exact value, with a margin,
    so the spread among the guide-based estimates is visible."""
    lows, highs = [], []
    for name in names:
        _, low, high = _band(curve, name)
        lows.append(low)
        highs.append(high)
    for r in ais:
        lows.append([r.estimate.mean - 2 * r.estimate.stderr])
        highs.append([r.estimate.mean + 2 * r.estimate.stderr])
    if exact is not None:
        lows.append([exact])
        highs.append([exact])
    low, high = float(np.min(np.concatenate(lows))), float(np.max(np.concatenate(highs)))
    margin = 0.08 * max(high - low, 1e-3)
    return low - margin, high + margin


def _name(fig: Figure, entry: str | None) -> None:
    if entry:
        fig.suptitle(f"evaluation.json: {entry}", fontsize=7, color="0.3")


def _draw_ais(ax, ais: Sequence) -> None:
    """AIS's mean log p(x) ± 2 s.e. against its number of steps T, in black."""
    steps = np.asarray([r.config.steps for r in ais])
    mean = np.asarray([r.estimate.mean for r in ais])
    se = np.asarray([r.estimate.stderr for r in ais])
    line, = ax.plot(steps, mean, marker="s", ms=4, color="black",
                    label=f"AIS, {ais[-1].config.chains} chains (against T)")
    ax.fill_between(steps, mean - 2 * se, mean + 2 * se, color=line.get_color(), alpha=0.1)


def plot_khat(psis: PSISDiagnostics, path: Path, entry: str | None = None) -> Path:
    """Histogram of the per-point PSIS k̂ of the guide's weights, with the 0.7 threshold
    (``entry``: the ``evaluation.json`` entry shown, named above the plot)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    khat = psis.khat.numpy()
    finite = khat[np.isfinite(khat)]  # ±∞: equal weights, or too few draws for a tail fit
    if len(finite):
        ax.hist(finite, bins=50, color="tab:blue", alpha=0.8)
    ax.axvline(psis.threshold, color="tab:red", ls="--",
               label=f"k̂ = {psis.threshold}: {100 * psis.fraction_above:.1f}% of points above")
    if len(finite) < len(khat):
        ax.set_title(f"{len(khat) - len(finite)} of {len(khat)} points have an infinite k̂ (not shown)")
    ax.set_xlabel("PSIS Pareto k̂ of q(z|x) as proposal for p(z|x)")
    ax.set_ylabel("data points")
    ax.legend()
    _name(fig, entry)
    save_figure(fig, path)
    return path
