"""Figures and the one-page summary of :func:`pyro_vae.diagnostics.diagnose`.

The page (``diagnostics.html``) carries its figures inline, so it can be mailed
or opened anywhere; it leads with plain verdicts a person can act on.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from pyro_vae.diagnostics.config import ACTIVE_THRESHOLD, RHAT_OK
from pyro_vae.diagnostics.discrete import DiscreteSite
from pyro_vae.diagnostics.suite import Diagnostics
from pyro_vae.figures import as_images, image_grid, save_figure
from pyro_vae.files import atomic_write
from pyro_vae.traces import is_real

KHAT_OK = 0.7


@dataclass(frozen=True)
class Verdict:
    """One line of the summary: what was checked, the figure, and whether it passes."""

    check: str
    value: str
    ok: bool
    meaning: str


def verdicts(s: dict[str, Any]) -> list[Verdict]:
    """Plain verdicts from ``Diagnostics.summary()``."""
    n, g, c, p = s["nuts"], s["gaps"], s["collapse"], s["ppc"]
    ess_needed = 100 * s["config"]["chains"]
    return [
        Verdict("NUTS converged (max r̂ over all points, sites and dimensions)",
                f"{n['rhat_max']:.3f} ({n['fraction_rhat_above_1.01']:.0%} of coordinates above {RHAT_OK})",
                n["rhat_max"] < RHAT_OK,
                f"below {RHAT_OK}: the chains agree, so the 'true posterior' below can be believed; "
                f"a few coordinates just above it call for more --samples, not alarm"),
        Verdict("NUTS effective sample size (min bulk / tail)",
                f"{n['ess_bulk_min']:.0f} / {n['ess_tail_min']:.0f}",
                min(n["ess_bulk_min"], n["ess_tail_min"]) >= ess_needed,
                f"at least 100 per chain ({ess_needed}) for stable means and quantiles"),
        Verdict("NUTS divergences", str(n["divergences"]), n["divergences"] == 0,
                "divergent transitions mean parts of the posterior were not explored"),
        Verdict("Guide as importance proposal (share of points with k̂ > 0.7)",
                f"{g['fraction_khat_amortized_above_0.7']:.0%}",
                g["fraction_khat_amortized_above_0.7"] == 0,
                "above 0.7 the guide misses posterior mass, and IWAE estimates of log p(x) that use it "
                "(pyro-vae evaluate) are unreliable"),
        Verdict("log p(x) here (share of points with k̂ > 0.7 for the NUTS-matched proposal)",
                f"{g['fraction_khat_log_px_above_0.7']:.0%}", g["fraction_khat_log_px_above_0.7"] == 0,
                "the gap table's log p(x) is trustworthy where this proposal's k̂ is below 0.7"),
        _gap_verdict("Amortization gap (encoder vs best Gaussian per point)",
                     g["amortization_gap"], g["amortization_gap_se"],
                     "lost per image because one encoder serves all images; large means a "
                     "better encoder (or more training of it) would help",
                     "the per-image Gaussian fit did not converge (more --local-steps)"),
        _gap_verdict("Approximation gap (best Gaussian vs true posterior)",
                     g["approximation_gap"], g["approximation_gap_se"],
                     "lost per image to the Gaussian family itself (diagonal, or full-rank for a "
                     "full-rank guide); large means a richer guide (full-rank, flows) would help",
                     "the NUTS-matched estimate of log p(x) is too low (more --samples or "
                     "--elbo-samples)"),
        Verdict("Active units, all latent sites (Cov_x E_q[u_d] > 0.01)", active_units_text(c),
                c["active_units"] == c["latent_dim"],
                "inactive dimensions have collapsed to the prior and carry no information"),
        Verdict("Posterior predictive p-value of log p(x | z)", f"{p['p_value']:.2f}",
                0.05 < p["p_value"] < 0.95,
                "near 0 or 1, held-out images are scored unlike the model's own replicates"),
    ] + [_discrete_verdict(name, site) for name, site in s.get("discrete", {}).items()]


USED_SHARE = 0.01
"""A discrete value counts as in use when it is the most probable for this share of images."""


def _discrete_verdict(name: str, d: dict[str, Any]) -> Verdict:
    """Whether every value of a discrete site explains some images, with how sure q(c | x) is."""
    used = sum(share >= USED_SHARE for share in d["share_per_value"])
    where = "summed out by the story" if d["source"] == "story" else "sampled by the guide"
    return Verdict(f"Discrete site {name} ({where}): values in use (most probable for ≥ "
                   f"{USED_SHARE:.0%} of images)",
                   f"{used} of {d['values']}; mean entropy of q({name} | x) "
                   f"{d['mean_entropy']:.2f} of at most {d['max_entropy']:.2f} nats",
                   used == d["values"],
                   "a value no image takes is a component (a decoder) the fit does not use; "
                   "an entropy near its maximum means the images do not choose between values")


NOISE_SE = 2.0
"""A negative gap within this many standard errors of 0 is read as Monte Carlo noise."""


def _gap_verdict(check: str, gap: float, se: float, meaning: str, not_converged: str) -> Verdict:
    """A gap is ≥ 0 by construction: a negative estimate within :data:`NOISE_SE` standard
    errors of 0 is Monte Carlo noise (the gap is small), and beyond them a sign that a fit
    behind it did not converge."""
    value = f"{gap:.2f} ± {se:.2f} nats"
    if gap >= 0:
        return Verdict(check, value, gap < 1.0, meaning)
    if gap + NOISE_SE * se >= 0:
        return Verdict(check, value, True,
                       f"negative, but within {NOISE_SE:g} standard errors of 0: Monte Carlo "
                       f"noise around a gap near 0 (a gap cannot be negative); the gap is what is {meaning}")
    return Verdict(check, value, False,
                   f"negative beyond {NOISE_SE:g} standard errors, which a gap cannot be: "
                   f"{not_converged}")


def active_units_text(c: dict[str, Any]) -> str:
    """Active units of a summary's ``collapse``: ``3 of 4`` (one site), or
    ``3 of 5 (z 2/4, ink 1/1)`` (summed over sites, then per site)."""
    total = f"{c['active_units']} of {c['latent_dim']}"
    sites = c.get("sites", {})
    if len(sites) < 2:
        return total
    return total + " (" + ", ".join(f"{name} {s['active_units']}/{s['dim']}"
                                    for name, s in sites.items()) + ")"


def gap_figure(d: Diagnostics, path: Path) -> Path:
    """Per point: log p(x), ELBO of the local optimum and of the amortized guide."""
    g = d.gaps
    order = np.argsort(g.log_px.numpy())
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    pos = np.arange(len(order))
    for values, label, marker in ((g.log_px, "log p(x) (IWAE, NUTS-matched proposal)", "o"),
                                  (g.elbo_local, "ELBO, best Gaussian per point (local SVI)", "s"),
                                  (g.elbo_amortized, "ELBO, amortized guide", "v")):
        ax.plot(pos, values.numpy()[order], marker, label=label)
    ax.set_xticks(pos, [str(int(i)) for i in d.indices.numpy()[order]], rotation=90, fontsize=7)
    ax.set_xlabel("held-out image (index)")
    ax.set_ylabel("nats")
    ax.set_title(f"approximation gap {float(g.approximation.mean()):.2f}, "
                 f"amortization gap {float(g.amortization.mean()):.2f} nats (means)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def collapse_figure(d: Diagnostics, path: Path) -> Path:
    """Per latent site, a column of bars per unconstrained dimension: average
    KL(q(z_d | x) ‖ p(z_d | parents)) above, Cov_x(E_q[u_d]) below with the 0.01 line."""
    sites = d.collapse.sites
    widths = [max(c.dim, 2) for c in sites.values()]
    fig = Figure(figsize=(max(6, 0.35 * sum(widths) + 1.5 * len(sites)), 5))
    # One scale per row, so that sites compare at a glance.
    axes = fig.subplots(2, len(sites), squeeze=False, sharex="col", sharey="row",
                        gridspec_kw={"width_ratios": widths})
    for (name, c), (ax_kl, ax_var) in zip(sites.items(), axes.T):
        dims = np.arange(c.dim)
        ax_kl.bar(dims, c.kl.numpy(), color="tab:blue")
        ax_kl.set_title(f"{name}: {int(c.active.sum())} of {c.dim} units active", fontsize=9)
        colours = np.where(c.active.numpy(), "tab:green", "tab:red")
        ax_var.bar(dims, c.mean_variance.numpy(), color=colours)
        ax_var.axhline(ACTIVE_THRESHOLD, color="k", ls="--", lw=1, label="0.01 (Burda et al.)")
        ax_var.set_yscale("log")
        ax_var.set_xlabel(f"dimension d of {name}")
        ax_var.set_xticks(dims)
    axes[0, 0].set_ylabel("KL(q(z_d|x) ‖ p(z_d|pa)) (nats)")
    axes[1, 0].set_ylabel("Cov_x(E_q[u_d])")
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"{d.collapse.active_units} of {d.collapse.latent_dim} units active "
                 f"(u: unconstrained coordinates)")
    save_figure(fig, path)
    return path


def _pixel_map(values, image_shape: Sequence[int]) -> np.ndarray:
    """``[D]`` per-pixel values as an ``[H, W]`` picture (colour channels averaged), unclipped."""
    shape = tuple(image_shape) if len(image_shape) >= 2 else (1, int(values.numel()))
    image = values.float().numpy().reshape(shape)
    return image.mean(axis=0) if image.ndim == 3 else image


def pixel_maps_figure(d: Diagnostics, image_shape: Sequence[int], path: Path) -> Path:
    """Per-pixel mean and variance of held-out data and of replicates x_rep ~ p(x | z),
    each pair on one colour scale so that the two can be compared by eye."""
    p = d.ppc
    rows = (("mean", p.data_mean, p.rep_mean), ("variance", p.data_var, p.rep_var))
    fig = Figure(figsize=(8, 7.5))
    axes = fig.subplots(2, 2)
    for row, (what, data, rep) in zip(axes, rows):
        vmax = float(max(data.max(), rep.max()))
        vmin = float(min(data.min(), rep.min()))
        for ax, values, who in zip(row, (data, rep), ("held-out data", "replicates")):
            im = ax.imshow(_pixel_map(values, image_shape), cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_title(f"{who}: pixel {what}")
            ax.set_axis_off()
        fig.colorbar(im, ax=list(row), fraction=0.046)
    save_figure(fig, path)
    return path


def loglik_figure(d: Diagnostics, path: Path) -> Path:
    """Histogram of log p(x | z) for held-out x and for replicates, z ~ q(z | x)."""
    p = d.ppc
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = np.concatenate([p.loglik_data.numpy(), p.loglik_rep.numpy()])
    bins = np.linspace(*np.percentile(values, [0.5, 99.5]), 50)
    ax.hist(p.loglik_data.numpy(), bins=bins, alpha=0.6, label="held-out data")
    ax.hist(p.loglik_rep.numpy(), bins=bins, alpha=0.6, label="replicated data")
    ax.set_xlabel("log p(x | z), z ~ q(z | x) (nats)")
    ax.set_ylabel("images")
    ax.set_title(f"posterior predictive check (p-value {p.p_value:.2f})")
    ax.legend()
    save_figure(fig, path)
    return path


def pair_site(d: Diagnostics) -> str | None:
    """The one latent site when the story has a single 2-D site on ℝ² (pair plots show it
    all), else None."""
    if len(d.sites) != 1:
        return None
    site = d.sites[0]
    return site.name if tuple(site.event_shape) == (2,) and is_real(site.support) else None


def pair_figure(d: Diagnostics, path: Path, n: int = 8) -> Path:
    """For a single 2-D latent site: ArviZ pair plots of NUTS (grey) against the amortized
    guide (orange) and the local optimum (blue), for the ``n`` points whose chains agree
    least (largest r̂)."""
    import arviz as az

    name = pair_site(d)
    rhat_per_point = d.convergence.worst_rhat_per_point()
    worst = np.argsort(-rhat_per_point)[:n]
    points = d.idata.posterior.point.values[worst]
    rhat = rhat_per_point[worst]
    cols = min(4, len(points))
    fig = Figure(figsize=(3.2 * cols, 3.2 * int(np.ceil(len(points) / cols)) + 0.4))
    axes = np.atleast_1d(fig.subplots(int(np.ceil(len(points) / cols)), cols, squeeze=False)).ravel()
    for ax, point, r in zip(axes, points, rhat):
        for group, colour in (("posterior", "0.3"), ("guide", "tab:orange"), ("local_guide", "tab:blue")):
            az.plot_pair(d.idata, group=group, var_names=[name], coords={"point": [point]}, ax=ax,
                         textsize=8, scatter_kwargs={"color": colour, "alpha": 0.3, "s": 4})
        ax.set_title(f"image {point}, r̂ {r:.3f}", fontsize=9)
    for ax in axes[len(points):]:
        ax.set_axis_off()
    fig.suptitle(f"{name} | x: NUTS (grey), amortized guide (orange), best local Gaussian (blue); "
                 "points with the largest r̂ first")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def write_figures(d: Diagnostics, image_shape: Sequence[int], folder: Path) -> list[Path]:
    """Every diagnostic PNG, named ``diagnose_*.png`` in ``folder``."""
    out = [gap_figure(d, folder / "diagnose_gaps.png"),
           collapse_figure(d, folder / "diagnose_collapse.png"),
           pixel_maps_figure(d, image_shape, folder / "diagnose_pixel_maps.png"),
           loglik_figure(d, folder / "diagnose_loglik.png")]
    if pair_site(d) is not None:
        out.append(pair_figure(d, folder / "diagnose_pairs.png"))
    return out + [discrete_figure(site, image_shape, folder / f"diagnose_discrete_{site.name}.png")
                  for site in d.discrete]


def discrete_figure(site: DiscreteSite, image_shape: Sequence[int], path: Path, n: int = 8) -> Path:
    """Per value k of a discrete site: its share of the images and the ``n`` images surest
    to take it (which images each component, or decoder, explains); beside it, where there
    are labels, the share of each label's images per value."""
    k, table = site.values, site.by_label()
    fig = Figure(figsize=(1.0 + 0.55 * n + (0.45 * k + 1.5 if table is not None else 0),
                          0.9 + 0.55 * k))
    axes = fig.subplots(1, 2 if table is not None else 1, squeeze=False,
                        width_ratios=[n, 0.8 * k + 2.5] if table is not None else None)[0]
    rows = [image_grid(_padded(site, value, n, image_shape), n) for value in range(k)]
    axes[0].imshow(np.concatenate(rows), interpolation="nearest")
    height = rows[0].shape[0]
    share = site.share()
    axes[0].set_yticks([(v + 0.5) * height for v in range(k)],
                       [f"{site.name} = {v}: {float(share[v]):.0%}" for v in range(k)])
    axes[0].set_xticks([])
    axes[0].set_title(f"images surest of each value of {site.name} (blank: no image takes it)")
    if table is not None:
        rates = table / np.maximum(table.sum(1, keepdims=True), 1)
        axes[1].imshow(rates, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        axes[1].set_xlabel(f"most probable {site.name}")
        axes[1].set_ylabel("label")
        axes[1].set_title("share of each label's images")
        axes[1].set_xticks(range(k))
        axes[1].set_yticks(range(len(table)))
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _padded(site: DiscreteSite, value: int, n: int, image_shape: Sequence[int]) -> np.ndarray:
    """``[n, H, W(, 3)]``: the images surest of ``value``, blank tiles where fewer exist."""
    tiles = as_images(site.images[site.examples(value, n).to(site.images.device)], image_shape)
    blank = np.ones((n - len(tiles), *as_images(site.images[:1], image_shape).shape[1:]),
                    dtype=np.float32)
    return np.concatenate([tiles, blank]) if len(tiles) < n else tiles


def _inline(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%"></figure>'


def _verdict_rows(items: list[Verdict]) -> str:
    rows = []
    for v in items:
        mark = "✅ ok" if v.ok else "⚠️ check"
        rows.append(f"<tr><td>{mark}</td><td>{html.escape(v.check)}</td><td><b>{html.escape(v.value)}"
                    f"</b></td><td>{html.escape(v.meaning)}</td></tr>")
    return "\n".join(rows)


def _gap_table(summary: dict[str, Any]) -> str:
    g, n = summary["gaps"], summary["nuts"]
    rows = [(f"log p(x) (IWAE, K = {summary['config']['elbo_samples']}, Student-t proposal matched to NUTS)",
             g["log_px"]),
            ("ELBO, best Gaussian of the guide's family, per image", g["elbo_local"]),
            ("ELBO, amortized guide", g["elbo_amortized"]),
            ("approximation gap", g["approximation_gap"]), ("amortization gap", g["amortization_gap"])]
    cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{value:.2f}</td></tr>" for name, value in rows)
    return (f"<table><tr><th>mean over {len(summary['points'])} held-out images</th><th>nats</th></tr>"
            f"{cells}</table><p>Against NUTS, the amortized guide's means sit "
            f"{n['guide_mean_offset_sd']:.2f} posterior SDs off on average and its SDs are "
            f"{n['guide_sd_ratio']:.2f}× the posterior's (local Gaussian: "
            f"{n['local_guide_mean_offset_sd']:.2f} SDs, {n['local_guide_sd_ratio']:.2f}×).</p>")


def write_html(summary: dict[str, Any], figures: list[Path], path: Path, run_name: str) -> Path:
    """The one-page summary: which checkpoint it diagnosed, the verdicts, then the gap table
    and the figures inline."""
    items = verdicts(summary)
    failing = [v.check for v in items if not v.ok]
    headline = ("Every check passes." if not failing else
                f"{len(failing)} of {len(items)} checks need a look: " + "; ".join(failing) + ".")
    body = (f"<h1>Can this fit be trusted? {html.escape(run_name)}</h1>"
            f"{_scored_line(summary.get('scored'))}"
            f"<p><b>{html.escape(headline)}</b></p><table>{_verdict_rows(items)}</table>"
            f"<h2>Inference gaps</h2>{_gap_table(summary)}" + "".join(_inline(f) for f in figures))
    style = ("<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:left}</style>")
    atomic_write(path, (f"<!doctype html><html><head><meta charset='utf-8'><title>diagnostics"
                        f"</title>{style}</head><body>{body}</body></html>\n").encode())
    return path


def _scored_line(scored: dict | None) -> str:
    if not scored:
        return ""
    return (f"<p>The {html.escape(str(scored.get('checkpoint')))} checkpoint, after epoch "
            f"{scored.get('epoch')} (SHA-256 {html.escape(str(scored.get('sha256', ''))[:12])})."
            f"</p>")


@dataclass(frozen=True)
class Written:
    """The files a diagnosis wrote."""

    json: Path
    netcdf: Path
    html: Path
    figures: list[Path]


def write_diagnostics(d: Diagnostics, folder: Path, image_shape: Sequence[int],
                      title: str = "", scored: dict | None = None) -> Written:
    """``diagnostics.json``, ``diagnostics.nc`` (ArviZ), the PNGs and ``diagnostics.html`` in
    ``folder``; ``scored`` (which checkpoint, its epoch and digest) is recorded in both."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = d.summary()
    if scored:
        summary["scored"] = scored
    summary["verdicts"] = [vars(v) for v in verdicts(summary)]
    json_path = folder / "diagnostics.json"
    atomic_write(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    nc_path = folder / "diagnostics.nc"
    # netCDF is written by its own library: to a temporary name, then moved into place.
    partial = folder / ".diagnostics.nc.partial"
    d.idata.to_netcdf(str(partial))
    os.replace(partial, nc_path)
    figures = write_figures(d, image_shape, folder)
    page = write_html(summary, figures, folder / "diagnostics.html", title or str(folder))
    return Written(json_path, nc_path, page, figures)
