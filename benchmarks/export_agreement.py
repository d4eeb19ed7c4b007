"""Every registered decoder and encoder, exported and read back: the agreement table of
``pyro-vae export`` (issue 24).

Each registered decoder is paired with a likelihood and each encoder with a guide, cycling
the shorter list, so that every registered decoder, likelihood, encoder and guide is in one
case (``tests/export/test_export.py`` runs the same cases). Each case is built small (latent
2, 8 hidden units, 8×8 images) from seed 0, traced once on 16 rows, written as its own
``.pt2`` and ``.onnx`` file, and both files are run back (``torch.export.load``,
onnxruntime) on 5 random rows beside the PyTorch module. Printed as a Markdown table: max
abs error over the part's outputs, PyTorch's own float32 error there (against the same
module in float64), and the seconds to trace, convert and write the file (the first row
carries the tracer's and converter's start-up)::

    python benchmarks/export_agreement.py [--out FILE.md] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pyro_vae.config import ModelConfig
from pyro_vae.export import FORMATS, Part, check_file, find_parts, save, to_onnx, traced
from pyro_vae.guides import ENCODERS, GUIDES
from pyro_vae.models import DECODERS, LIKELIHOODS
from pyro_vae.programs import as_program
from pyro_vae.stories import build_vae

SHAPE = (1, 8, 8)
D = 64
ROWS = 16
# A convolutional part with as few channels as make it that part.
OPTIONS = {"encoder": {"conv": {"channels": (4, 8), "features": 8},
                       "resnet": {"channels": (4,), "blocks": 1, "features": 8}},
           "decoder": {"conv": {"channels": (8, 4), "hidden": 8},
                       "resnet": {"channels": (4,), "blocks": 1}}}


def pairs(first: list[str], second: list[str]) -> list[tuple[str, str]]:
    """Enough pairs that every name of both lists appears (the shorter list cycles)."""
    n = max(len(first), len(second))
    return [(first[i % len(first)], second[i % len(second)]) for i in range(n)]


def cases() -> list[tuple[str, str, str]]:
    """``(role, part, its partner)``: decoders with likelihoods, encoders with guides."""
    return [("decoder", d, lik) for d, lik in pairs(list(DECODERS), list(LIKELIHOODS))] + \
        [("encoder", e, g) for e, g in pairs(list(ENCODERS), list(GUIDES))]


def tiny_part(role: str, first: str, second: str) -> Part:
    """The ``role`` part of a small VAE with ``first`` as its decoder (encoder) and ``second``
    as its likelihood (guide), traced on 16 binary rows; named ``role-first-second``."""
    names = dict(decoder=first, likelihood=second) if role == "decoder" else \
        dict(encoder=first, guide=second)
    cfg = ModelConfig(latent_dim=2, hidden_sizes=(8,), options=OPTIONS, **names)
    model, guide = build_vae(cfg, D, seed=0, image_shape=SHAPE)
    x = torch.bernoulli(torch.rand(ROWS, D, generator=torch.Generator().manual_seed(0)))
    (part,) = find_parts(as_program(model, "VAE"), as_program(guide, cfg.guide), x, {}, (role,))
    return Part(f"{role}-{first}-{second}", part.role, part.source, part.module, part.inputs,
                part.batched, part.outputs, part.law)


def rows(folder: Path) -> list[tuple]:
    out = []
    for case in cases():
        part = tiny_part(*case)
        start = time.perf_counter()
        program = traced(part)
        trace = time.perf_counter() - start
        for fmt in FORMATS:
            start = time.perf_counter()
            written = program if fmt == "pt2" else to_onnx(program, part)
            path = save(written, fmt, folder / f"{part.name}.{fmt}")
            seconds = trace + time.perf_counter() - start
            a = check_file(part, fmt, path, seconds, batch=5, seed=1)
            out.append((case[0], f"{case[1]} + {case[2]}", fmt, a.max_abs_error,
                        max(a.float32_errors.values()), a.agrees, seconds))
            print(f"{part.name} {fmt}: {a.max_abs_error:.2e}", file=sys.stderr)
    return out


def table(found: list[tuple]) -> str:
    lines = ["| part | registered parts | format | max abs error | PyTorch float32 error "
             "| agrees | export s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r} | {p} | {f} | {e:.2e} | {own:.2e} | {'yes' if ok else 'NO'} | {s:.2f} |"
              for r, p, f, e, own, ok, s in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        found = rows(Path(folder))
    import onnx
    import onnxruntime

    text = (f"{table(found)}\n\ntorch {torch.__version__}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
            f"{args.threads} thread(s); 5 random rows, traced on {ROWS}\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(r[5] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
