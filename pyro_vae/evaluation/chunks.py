"""How big the evaluator's chunks may be: the bytes one draw for one image costs in a program
call (measured on a probe call), the bytes of the running sums held per image
(:func:`~pyro_vae.evaluation.running.point_bytes`), and the chunk sizes that keep their sum
under a :class:`~pyro_vae.memory.MemoryBudget`.

.. code-block:: text

    working memory ≈ particles · points · cell_bytes      one program call
                   + hold · point_bytes                   the running sums of the held images
                   ≤ budget                                whatever K and N are

A request whose smallest chunk (one draw for one image, and its running sums) exceeds the
budget is refused (:class:`~pyro_vae.memory.BudgetError`, one sentence).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from pyro_vae.memory import BudgetError, MemoryBudget, format_size

SAFETY = 2
"""The probe counts the tensors a call keeps (module outputs, site values and densities);
the temporaries of elementwise operations and densities come on top, about as many again."""


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


@contextlib.contextmanager
def counted_outputs() -> Iterator[list[int]]:
    """Inside: every ``nn.Module`` call adds its outputs' bytes to the list yielded."""
    seen: list[int] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(_nbytes(output))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def probe_cell_bytes(call: Callable[[int, int], tuple[Any, ...]], draws: int = 2,
                     points: int = 2) -> int:
    """Bytes of working memory per draw·image of a program call: ``call(draws, points)`` runs
    one (returning its traces), counted by module outputs and the traces' site values and
    log-densities, times :data:`SAFETY`."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]), counted_outputs() as seen:
        traces = call(draws, points)
    sites = sum(_nbytes(site.get("value")) + _nbytes(site.get("log_prob"))
                for trace in traces if trace is not None
                for site in trace.nodes.values() if site["type"] == "sample")
    return max(1, SAFETY * (sum(seen) + sites) // (draws * points))


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks of one evaluation and what they cost."""

    particles: int
    """Draws per program call."""
    points: int
    """Images per program call."""
    hold: int
    """Images whose running sums are held at once (a unit kept on disk when done)."""
    cell_bytes: int
    """Estimated bytes per draw·image of a program call."""
    point_bytes: int
    """Bytes of the running sums per held image."""
    budget: MemoryBudget

    @property
    def working_bytes(self) -> int:
        """The bound: one program call and the held images' running sums."""
        return self.particles * self.points * self.cell_bytes + self.hold * self.point_bytes

    def summary(self) -> dict[str, Any]:
        return {**self.budget.summary(), "particle_chunk": self.particles,
                "point_chunk": self.points, "hold_points": self.hold,
                "bytes_per_draw_and_image": self.cell_bytes, "bytes_per_held_image": self.point_bytes,
                "working_bytes_bound": self.working_bytes}

    def describe(self) -> str:
        return (f"memory: {self.particles} draws × {self.points} images per call, "
                f"{self.hold} images held; working memory about "
                f"{format_size(self.working_bytes)} of a {self.budget} budget")


def plan_chunks(cell_bytes: int, point_bytes: int, budget: MemoryBudget,
                particles: tuple[int, bool], points: tuple[int, bool], hold: int,
                what: str = "evaluate") -> ChunkPlan:
    """The largest chunks up to the defaults (or the sizes given) that fit ``budget``.

    ``particles`` and ``points``: (size, given by the user); a default shrinks to fit, a
    size given that does not fit is refused, naming its flag. ``hold`` is a maximum."""
    smallest = cell_bytes + point_bytes
    if smallest > budget.bytes:
        raise BudgetError(
            f"{what}: one draw for one image needs about {format_size(smallest)} (a program "
            f"call {format_size(cell_bytes)}, its running sums {format_size(point_bytes)}), "
            f"more than the memory budget of {budget}; raise --memory-budget")
    hold = max(1, min(hold, budget.bytes // 2 // point_bytes,
                      (budget.bytes - cell_bytes) // point_bytes))
    cells = (budget.bytes - hold * point_bytes) // cell_bytes
    for (size, given), flag in ((points, "--point-chunk"), (particles, "--particle-chunk")):
        if given and size > cells:
            raise BudgetError(
                f"{what}: {flag} {size} needs about {format_size(size * cell_bytes)} per "
                f"program call, more than the memory budget of {budget} leaves "
                f"({format_size(cells * cell_bytes)}); choose a smaller one or raise "
                f"--memory-budget")
    (n_particles, particles_given), (n_points, points_given) = particles, points
    if particles_given and points_given and n_particles * n_points > cells:
        raise BudgetError(
            f"{what}: --particle-chunk {n_particles} × --point-chunk {n_points} needs about "
            f"{format_size(n_particles * n_points * cell_bytes)} per program call, more than "
            f"the memory budget of {budget} leaves ({format_size(cells * cell_bytes)}); choose "
            f"smaller ones or raise --memory-budget")
    if not points_given:
        n_points = min(n_points, cells // n_particles if particles_given else cells)
    if not particles_given:
        n_particles = min(n_particles, cells // n_points)
    return ChunkPlan(n_particles, n_points, hold, cell_bytes, point_bytes, budget)
