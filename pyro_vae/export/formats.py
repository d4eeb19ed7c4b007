"""A :class:`~pyro_vae.export.parts.Part` as a file: ``torch.export`` (``.pt2``) or ONNX
(``.onnx``, through ``torch.onnx.export(..., dynamo=True)``), with a dynamic batch
dimension; and the check that reads the file back (``torch.export.load``, ``onnxruntime``)
and compares it with the PyTorch module on random inputs.

Both formats start from one ``torch.export`` trace, so a story that cannot be traced (Python
control flow on a tensor's value) is refused once, in one line that names the line of code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyro
import torch
from torch import Tensor
from torch.export import Dim, ExportedProgram

from pyro_vae.export.parts import ExportError, Part

FORMATS = ("onnx", "pt2")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2"}
EXTRA = 'pip install -e ".[export]"'
TOLERANCE = 1e-5
"""The largest absolute difference a float32 export may show against the PyTorch module."""
BATCH = "batch"


class MissingExtraError(ExportError):
    """An optional package that ONNX export needs is not installed."""


def require_onnx() -> None:
    """Refuse at once, in one line naming the extra, where ONNX export cannot run."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise MissingExtraError(f"--format onnx needs the {package} package, which is not "
                                    f"installed: {EXTRA}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and torch.onnx say what they trace (a failed trace prints its whole
    graph to stderr, and logs warnings from loggers with levels of their own); the user gets
    one line instead. Pyro's argument checks are off: each is a Python branch on a value."""
    logging.disable(logging.CRITICAL)
    try:
        with pyro.validation_enabled(False), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def dynamic_shapes(part: Part) -> dict[str, tuple[dict[int, Dim] | None, ...]]:
    """Dimension 0 of each batched input is the one dynamic dimension ``batch`` (≥ 1); the
    inputs are the ``*tensors`` of :meth:`~pyro_vae.export.parts.Outputs.forward`."""
    batch = Dim(BATCH, min=1)
    return {"tensors": tuple({0: batch} if name in part.batched else None
                             for name in part.inputs)}


def traced(part: Part) -> ExportedProgram:
    """``torch.export.export`` of the part, batch dynamic.

    Raises:
        ExportError: it cannot be traced; one line naming why and where.
    """
    try:
        with _quiet():
            return torch.export.export(part.module, tuple(part.inputs.values()),
                                       dynamic_shapes=dynamic_shapes(part), strict=False)
    except Exception as err:  # torch.export raises many kinds; each becomes the one line
        raise ExportError(refusal(part, err)) from None


def refusal(part: Part, err: Exception) -> str:
    """The line that says why ``part`` could not be traced, and at which line of code."""
    text = str(err)
    calls = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)', text)
    where = f" ({Path(calls[-1][0]).name} line {calls[-1][1]}: {calls[-1][2].strip()})" \
        if calls else ""
    if "data-dependent" in text or "data dependent" in text:
        why = ("its code branches in Python on a tensor's value (data-dependent control flow), "
               "which an exported program cannot hold; write the branch with torch.where")
    elif "Constraints violated" in text:
        why = "it does not work for every batch size (its code fixes the number of rows)"
    else:
        why = f"torch.export failed: {type(err).__name__}: {_first_line(text)}"
    return f"cannot export {part.source}{where}: {why}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def to_onnx(program: ExportedProgram, part: Part) -> Any:
    """The ONNX program (``torch.onnx.ONNXProgram``) of a traced part, named inputs and outputs."""
    require_onnx()
    try:
        with _quiet():
            return torch.onnx.export(program, tuple(part.inputs.values()), None, dynamo=True,
                                     input_names=list(part.inputs),
                                     output_names=list(part.outputs), verbose=False)
    except Exception as err:  # the converter's own errors, as one line
        raise ExportError(f"cannot convert {part.source} to ONNX: {type(err).__name__}: "
                          f"{_first_line(str(err))}") from None


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that becomes ``path`` once written: no half file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(program: ExportedProgram | Any, fmt: str, path: Path) -> Path:
    """Write a traced program (``pt2``) or an ONNX program (``onnx``) to ``path``."""
    with _replacing(Path(path)) as tmp:
        if fmt == "pt2":
            torch.export.save(program, tmp)
        else:
            program.save(tmp)
    return Path(path)


def _spec(name: str, shape: Any, dtype: torch.dtype) -> dict:
    return {"name": name, "shape": [d if isinstance(d, int) else BATCH for d in shape],
            "dtype": str(dtype).removeprefix("torch.")}


def input_specs(part: Part) -> list[dict]:
    """``[{"name", "shape", "dtype"}]`` of the inputs, ``batch`` for the dynamic size."""
    return [_spec(name, [BATCH, *v.shape[1:]] if name in part.batched else v.shape, v.dtype)
            for name, v in part.inputs.items()]


def output_specs(program: ExportedProgram, part: Part) -> list[dict]:
    """The same of the outputs, read off the traced program (a symbolic size is ``batch``)."""
    node = next(n for n in program.graph.nodes if n.op == "output")
    return [_spec(name, a.meta["val"].shape, a.meta["val"].dtype)
            for name, a in zip(part.outputs, node.args[0])]


# ---------------------------------------------------------------- reading the files back


def random_inputs(part: Part, batch: int, seed: int) -> dict[str, Tensor]:
    """Inputs of ``batch`` rows: standard normal where the example takes negative values,
    uniform on [0, 1] where it lies there (pixels), |normal| where it is positive; an integer
    input (a label) takes values the example took."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, example in part.inputs.items():
        shape = (batch, *example.shape[1:]) if name in part.batched else tuple(example.shape)
        if example.is_floating_point():
            value = torch.randn(shape, generator=gen, dtype=example.dtype)
            if example.numel() and example.min() >= 0:
                value = value.abs() if example.max() > 1 else torch.rand(
                    shape, generator=gen, dtype=example.dtype)
        else:
            seen = example.reshape(-1)
            value = seen[torch.randint(len(seen), shape, generator=gen)]
        out[name] = value
    return out


def run_file(path: Path, fmt: str, part: Part, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The outputs of the written file on ``inputs``: onnxruntime's or the loaded program's."""
    if fmt == "pt2":
        with _quiet():
            got = torch.export.load(path).module()(*inputs.values())
        return dict(zip(part.outputs, got))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(part.outputs), {k: v.numpy() for k, v in inputs.items()})
    return {name: torch.from_numpy(value) for name, value in zip(part.outputs, got)}


def abs_error(got: Tensor, want: Tensor) -> float:
    """max |got − want| (∞ for another shape, or a NaN in one where the other has none)."""
    if got.shape != want.shape:
        return float("inf")
    got, want = got.detach(), want.detach()
    both = torch.isnan(got) & torch.isnan(want)
    diff = torch.where(both, torch.zeros_like(want), (got.to(want.dtype) - want).abs())
    return float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0


@dataclass(frozen=True)
class Agreement:
    """A written file against the PyTorch module on the same random inputs."""

    part: str
    format: str
    file: str
    batch: int
    errors: dict[str, float]
    """max |file − module| per output."""
    float32_errors: dict[str, float]
    """max |module − module in float64| per output: how well float32 itself can say it."""
    export_seconds: float
    """Tracing, converting and writing the file."""

    @property
    def max_abs_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def allowed(self, name: str) -> float:
        """:data:`TOLERANCE`, or twice PyTorch's own float32 error where that is larger (a
        mean that cancels two large terms): two float32 programs as good as each other then
        differ by up to the sum of their errors."""
        return max(TOLERANCE, 2 * self.float32_errors.get(name, 0.0))

    @property
    def agrees(self) -> bool:
        return all(e <= self.allowed(n) for n, e in self.errors.items())

    def to_json(self) -> dict:
        return {"part": self.part, "format": self.format, "file": self.file, "batch": self.batch,
                "max_abs_error": self.max_abs_error, "errors": self.errors,
                "pytorch_float32_errors": self.float32_errors,
                "allowed": {n: self.allowed(n) for n in self.errors}, "agrees": self.agrees,
                "export_seconds": round(self.export_seconds, 3)}


def _outputs(module: torch.nn.Module, inputs: dict[str, Tensor], names: tuple[str, ...]
             ) -> dict[str, Tensor]:
    with torch.no_grad(), pyro.validation_enabled(False):
        return dict(zip(names, module(*inputs.values())))


def float32_errors(part: Part, inputs: dict[str, Tensor], want: dict[str, Tensor]
                   ) -> dict[str, float]:
    """How far the module's float32 outputs lie from its own in float64 (its parameters
    widened in place for the call, then given back exactly; not a copy, which would lose the
    identity of singletons such as ``constraints.real``)."""
    tensors = [*part.module.parameters(), *part.module.buffers()]
    kept = [t.data for t in tensors]
    try:
        for t in tensors:
            if t.is_floating_point():
                t.data = t.data.double()
        exact = _outputs(part.module, {k: v.double() if v.is_floating_point() else v
                                       for k, v in inputs.items()}, part.outputs)
    except (RuntimeError, TypeError):  # a module that cannot run in float64: no allowance
        return {name: 0.0 for name in part.outputs}
    finally:
        for t, data in zip(tensors, kept):
            t.data = data
    return {name: abs_error(want[name].double(), exact[name]) for name in part.outputs}


def check_file(part: Part, fmt: str, path: Path, seconds: float, batch: int = 5,
               seed: int = 0) -> Agreement:
    """Run the file at ``path`` and the PyTorch module on the same ``batch`` random rows."""
    inputs = random_inputs(part, batch, seed)
    want = _outputs(part.module, inputs, part.outputs)
    got = run_file(path, fmt, part, inputs)
    errors = {name: abs_error(got[name], want[name]) for name in part.outputs}
    return Agreement(part.name, fmt, Path(path).name, batch, errors,
                     float32_errors(part, inputs, want), seconds)


def timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start
