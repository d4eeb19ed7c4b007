"""``pyro-vae export RUN``: a fitted run's decoder and encoder as ``.pt2`` or ``.onnx`` files
in ``RUN/export/``, with ``model_card.json`` beside them.

.. code-block:: text

    RUN/export/decoder.onnx        z → the parameters of p(x | z) and its mean image
    RUN/export/encoder.onnx        x → the parameters of q(z | x)
    RUN/export/model_card.json     inputs and outputs (names, shapes with the batch axis,
                                   dtypes), the likelihood, the latent sites, the run's
                                   evaluation figures, the run and checkpoint digest, versions,
                                   and with --check how far each file lies from PyTorch

Every part is traced (and converted) before any file is written, so a part that cannot be
exported leaves the folder as it was.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from pyro_vae.export.formats import (
    FORMATS,
    SUFFIX,
    Agreement,
    check_file,
    input_specs,
    output_specs,
    require_onnx,
    save,
    timed,
    to_onnx,
    traced,
)
from pyro_vae.export.parts import ROLES, Part, find_parts, law_name
from pyro_vae.files import atomic_write
from pyro_vae.runs import LoadedRun, load_run, read_run
from pyro_vae.traces import image_site, is_enumerated, is_latent, slice_rows, trace_program

CARD = "model_card.json"
CARD_FORMAT = "pyro-vae-model-card/1"
EXPORT_DIR = "export"
ROWS = 16
"""Test rows the parts are traced on (the batch size of the example; any size runs after)."""
LOADS = {"onnx": 'onnxruntime.InferenceSession("{file}").run(None, {{{feeds}}})',
         "pt2": 'torch.export.load("{file}").module()({args})'}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote, and with ``check`` how each file agreed."""

    folder: Path
    card: Path
    files: list[Path]
    agreements: list[Agreement]

    def table(self) -> str:
        """The agreement table: one row per file."""
        head = ("part", "format", "max abs error", "PyTorch float32 error", "agrees",
                "export s")
        rows = [(a.part, a.format, f"{a.max_abs_error:.2e}",
                 f"{max(a.float32_errors.values(), default=0.0):.2e}",
                 "yes" if a.agrees else "NO", f"{a.export_seconds:.2f}")
                for a in self.agreements]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in (head, *rows))


def export_run(run: Path, fmt: str = "onnx", roles: tuple[str, ...] = ROLES,
               out: Path | None = None, *, which: str = "last", trust_story: bool = False,
               check: bool = False, batch: int = 5, seed: int = 0,
               say: Callable[[str], None] | None = None) -> ExportResult:
    """Export the ``roles`` of the fitted run in ``run`` as ``fmt`` files into ``out``
    (default ``run/export``), with the model card; ``check``: run each file back on ``batch``
    random rows (``seed``) and record its largest difference from PyTorch. A story file in
    the run is imported only if trusted (``trust_story``, as :func:`pyro_vae.runs.load_run`).

    Raises:
        ExportError: a part cannot be exported (one line: which and why), or ONNX export is
            asked for without the ``export`` extra.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    tell = say or (lambda line: None)
    loaded = load_run(run, "cpu", which, trust_story=trust_story)
    x, fields = example_rows(loaded)
    parts = find_parts(loaded.model, loaded.guide, x, fields, roles)
    programs = []
    for part in parts:  # every part first: a refusal leaves no file behind
        program, seconds = timed(traced, part)
        written = program
        if fmt == "onnx":
            written, more = timed(to_onnx, program, part)
            seconds += more
        programs.append((part, program, written, seconds))
        tell(f"{part.name}: {part.source} traced{' and converted' if fmt == 'onnx' else ''} "
             f"in {seconds:.1f} s")
    folder = Path(out) if out is not None else loaded.path / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries, files, agreements = [], [], []
    for part, program, written, seconds in programs:
        path = save(written, fmt, folder / f"{part.name}{SUFFIX[fmt]}")
        files.append(path)
        entries.append(file_entry(part, program, written, fmt, path))
        if check:
            agreements.append(check_file(part, fmt, path, seconds, batch, seed))
            tell(f"{path.name}: max abs error {agreements[-1].max_abs_error:.2e}")
    card = model_card(loaded, x, fields, entries, agreements)
    atomic_write(folder / CARD, (json.dumps(card, indent=2) + "\n").encode())
    return ExportResult(folder, folder / CARD, files, agreements)


def example_rows(loaded: LoadedRun, rows: int = ROWS) -> tuple[Tensor, dict[str, Tensor]]:
    """The first ``rows`` test images of the run and their per-row fields."""
    x = loaded.data.eval_split("test")[:rows]
    return x, slice_rows(loaded.data.test.fields(), 0, len(x))


def file_entry(part: Part, program: Any, written: Any, fmt: str, path: Path) -> dict[str, Any]:
    """The model card's entry for one file (``program`` traced, ``written`` as written):
    what it is and how to call it."""
    entry = {"file": path.name, "format": fmt, "part": part.role, "source": part.source,
             "distribution": part.law or None, "inputs": input_specs(part),
             "outputs": output_specs(program, part)}
    if fmt == "onnx":
        entry["opset"] = next((o.version for o in written.model_proto.opset_import
                               if o.domain == ""), None)
    entry["load"] = LOADS[fmt].format(file=path.name, args=", ".join(part.inputs),
                                      feeds=", ".join(f'"{n}": {n}' for n in part.inputs))
    if any(name.endswith("eps") for name in part.inputs):
        entry["noise"] = ("inputs named *eps are standard-normal noise, one draw per row: "
                          "the *draw outputs are q's draws for that noise")
    return entry


def model_card(loaded: LoadedRun, x: Tensor, fields: dict[str, Tensor],
               files: list[dict], agreements: list[Agreement]) -> dict[str, Any]:
    """``model_card.json``: see the module's docstring."""
    trace = trace_program(loaded.model, x, fields)
    site = image_site(trace, x)
    row = read_run(loaded.path)
    return {
        "format": CARD_FORMAT,
        "source": {"run": str(loaded.path.resolve()), **loaded.scored},
        "story": {"model": loaded.model.name, "guide": loaded.guide.name, "story": row.story,
                  "parts": {k: v for k, v in row.parts.items() if v}},
        "likelihood": {"site": site, "distribution": law_name(trace.nodes[site]["fn"]),
                       "name": row.parts.get("likelihood")},
        "latent_sites": [{"name": name, "event_shape": list(s["fn"].event_shape),
                          "support": str(s["fn"].support), "summed_out": is_enumerated(s)}
                         for name, s in trace.nodes.items() if is_latent(s)],
        "batch_axis": "dimension 0 of every input and output whose shape says \"batch\": "
                      "any number of rows, at least 1",
        "files": files,
        "evaluation": evaluation_figures(row),
        "check": [a.to_json() for a in agreements] or None,
        "versions": versions(),
    }


def evaluation_figures(row: Any) -> dict[str, Any]:
    """The run's own figures, as ``pyro-vae compare`` reads them (blank where it has none)."""
    keep = ("epochs", "final_val_elbo", "best_val_elbo", "evaluated_on", "iwae", "ais",
            "khat_share", "khat_threshold", "approximation_gap", "amortization_gap",
            "diagnosed_on", "active_units")
    fields = dataclasses.asdict(row)
    return {k: fields[k] for k in keep if fields.get(k) is not None}


def versions() -> dict[str, str]:
    """The packages that made the files (those of the ONNX side where installed)."""
    out = {"torch": torch.__version__}
    for package in ("pyro-ppl", "pyro-vae", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
