"""How much memory a long computation may use: the memory available now, a budget read from
a flag or the environment, and sizes written and read as people write them (``200MB``).

A command that works in chunks (``evaluate``, AIS, ``diagnose``'s gap table) sizes its
chunks so that its working memory stays under a :class:`MemoryBudget`, whatever K and N are,
and refuses in one line a request whose smallest chunk (one draw for one image) would not
fit. The budget is the ``--memory-budget`` flag, else ``$PYRO_VAE_MEMORY_BUDGET``, else
:data:`AVAILABLE_SHARE` of the memory available when the command starts (GPU memory for a
CUDA device).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

ENV = "PYRO_VAE_MEMORY_BUDGET"
AVAILABLE_SHARE = 0.5
"""The share of the available memory a command's chunks may use when no budget is given:
the rest is for the process itself (torch, the model, the data) and for others."""

UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3,
         "GB": 1000**3, "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2,
         "GIB": 1024**3, "TIB": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """``"200MB"`` → 200,000,000 bytes (B, KB, MB, GB, TB and KiB, MiB, GiB, TiB; a plain
    number is bytes). ValueError, in one sentence, for anything else or a size below 1 byte."""
    match = _SIZE.match(str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in UNITS:
        raise ValueError(f"expected a size such as 200MB or 2GiB, got {text!r}")
    value = float(match.group(1)) * UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {text!r}")
    return int(value)


def format_size(nbytes: float) -> str:
    """``41.9 MB``: bytes in the decimal unit that leaves 1 to 999 of it."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(nbytes) < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory available to new allocations now: on a CUDA device its free memory; on the
    CPU psutil's ``available`` where psutil is installed, else MemAvailable of
    /proc/meminfo (Linux), else the physical memory (os.sysconf)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes a computation's chunks may hold at once, and where the number came from."""

    bytes: int
    """The budget in bytes."""
    source: str
    """``--memory-budget``, ``$PYRO_VAE_MEMORY_BUDGET`` or ``half of the available memory``."""

    def __str__(self) -> str:
        return f"{format_size(self.bytes)} ({self.source})"

    def summary(self) -> dict[str, object]:
        return {"budget_bytes": self.bytes, "budget_source": self.source}


def memory_budget(device: torch.device | str = "cpu", given: str | int | None = None,
                  flag: str = "--memory-budget") -> MemoryBudget:
    """The budget: ``given`` (a size, from ``flag``), else ``$PYRO_VAE_MEMORY_BUDGET``,
    else :data:`AVAILABLE_SHARE` of :func:`available_bytes` of ``device``."""
    if given is not None:
        return MemoryBudget(given if isinstance(given, int) else parse_size(given), flag)
    if os.environ.get(ENV):
        try:
            return MemoryBudget(parse_size(os.environ[ENV]), f"${ENV}")
        except ValueError as err:
            raise ValueError(f"${ENV}: {err}") from None
    share = AVAILABLE_SHARE * available_bytes(device)
    return MemoryBudget(int(share), f"{AVAILABLE_SHARE:.0%} of the available memory")


class BudgetError(ValueError):
    """A request whose smallest chunk does not fit the memory budget."""
