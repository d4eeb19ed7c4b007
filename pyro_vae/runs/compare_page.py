"""What ``pyro-vae compare`` writes: ``compare.json``, the validation-ELBO curves of every run
on one pair of axes (``val_elbo.png``) and, with ``--html``, ``compare.html``: the table, the
notes and the figure embedded (base64), readable offline."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyro_vae.figures import save_figure
from pyro_vae.files import atomic_write
from pyro_vae.runs.compare import Comparison

JSON_NAME, FIGURE_NAME, HTML_NAME = "compare.json", "val_elbo.png", "compare.html"


@dataclass(frozen=True)
class ComparisonFiles:
    """The files :func:`write_comparison` wrote (``html`` is ``None`` unless asked for)."""

    json: Path
    figure: Path
    html: Path | None


def write_comparison(comparison: Comparison, out: Path, html_page: bool = False) -> ComparisonFiles:
    """Write ``compare.json`` and ``val_elbo.png`` into the folder ``out`` (made if need be),
    and ``compare.html`` when ``html_page``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = curves_figure(comparison, out / FIGURE_NAME)
    record = comparison.to_json() | {"figure": FIGURE_NAME}
    json_path = out / JSON_NAME
    atomic_write(json_path, (json.dumps(_nulls(record), indent=2, default=str) + "\n").encode())
    page = write_html(comparison, figure, out / HTML_NAME) if html_page else None
    return ComparisonFiles(json_path, figure, page)


def curves_figure(comparison: Comparison, path: Path) -> Path:
    """Every run's validation ELBO against epoch, one line each on the same axes. The y-axis
    spans the epochs after each run's first tenth (the first epochs of a fit lie far below
    and would flatten the rest); what it leaves out is said on the figure."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    shown, tails, clipped = 0, [], False
    for row in comparison.runs:
        if not row.curve:
            continue
        epochs, values = zip(*row.curve)
        style = ("-", "--", ":", "-.")[shown // 10 % 4]  # ten colours, then another line style
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, markersize=3,
                linewidth=1.5, linestyle=style, label=row.name)
        shown += 1
        skip = math.ceil(0.1 * len(values)) if len(values) >= 5 else 0
        tails += list(values[skip:])
    if tails:
        all_values = [v for r in comparison.runs for _, v in r.curve]
        low, high = min(tails), max(all_values)
        pad = max(0.05 * (high - low), 0.05)
        ax.set_ylim(low - pad, high + pad)
        clipped = min(all_values) < low - pad
    missing = [r.name for r in comparison.runs if not r.curve]
    if missing:
        ax.plot([], [], " ", label=f"no validation ELBO: {', '.join(missing)}")
    if clipped:
        ax.text(0.01, 0.01, "earlier epochs lie below the axis", transform=ax.transAxes,
                fontsize=8, color="0.4")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation ELBO (nats per image)")
    title = "validation ELBO of each run"
    if not comparison.comparable:
        title += f" (not comparable: {' and '.join(comparison.why_not)})"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if shown or missing:
        # Beside the axes, so that no curve hides behind it.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    save_figure(fig, path)
    return path


def write_html(comparison: Comparison, figure: Path, path: Path) -> Path:
    """One self-contained page: the table (blank cells where a run has no value), the notes,
    and the figure inline. No external resources."""
    groups: list[list] = []
    for group in comparison.groups():
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    spans = "".join(f"<th class='group' colspan='{n}'>{html.escape(g)}</th>" for g, n in groups)
    # Long setting names may break after a dot or an underscore; a value ± its error may not.
    head = "".join(f"<th>{_breakable(c) if g == 'settings that differ' else html.escape(c)}</th>"
                   for c, g in zip(comparison.columns(), comparison.groups()))
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(v).replace(' ± ', '&nbsp;±&nbsp;')}</td>"
                                      for v in row) + "</tr>" for row in comparison.table())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in comparison.notes)
    verdict = ("The runs fit the same data: ranked by best validation ELBO." if comparison.comparable
               else "The runs are not comparable; they are not ranked.")
    image = base64.b64encode(Path(figure).read_bytes()).decode()
    folders = "".join(f"<li><code>{html.escape(str(r.path))}</code></li>" for r in comparison.runs)
    style = ("<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
             "font-size:0.85em}td,th{padding:3px 6px;border-bottom:1px solid #ddd;text-align:left;"
             "vertical-align:bottom}th{background:#f3f3f3;max-width:7em}td{white-space:nowrap;vertical-align:top}"
             "th.group{text-align:center;background:#e4e9f2;border-left:2px solid #fff}"
             "tr:hover td{background:#fafafa}img{max-width:100%}</style>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>pyro-vae compare</title>"
            f"{style}</head><body><h1>pyro-vae compare: {len(comparison.runs)} runs</h1>"
            f"<p><b>{html.escape(verdict)}</b> ELBO, IWAE, AIS and gaps are in nats per image; "
            f"a blank cell is a run without that file (evaluation.json, diagnostics.json).</p>"
            f"<div style='overflow-x:auto'><table><tr>{spans}</tr><tr>{head}</tr>\n{body}"
            f"</table></div>"
            f"<ul>{notes}</ul><img alt='validation ELBO per epoch' "
            f"src='data:image/png;base64,{image}'><h2>Run folders</h2><ul>{folders}</ul>"
            f"</body></html>\n")
    atomic_write(path, page.encode())
    return path


def _breakable(name: str) -> str:
    return html.escape(name).replace(".", ".<wbr>").replace("_", "_<wbr>")


def _nulls(value):
    """Non-finite numbers as JSON null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(v) for v in value]
    return value
