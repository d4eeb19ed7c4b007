"""Which training rows each step of an epoch takes.

By default (``TrainConfig.labelled_every`` is ``None``) an epoch is one permutation of the
training rows cut into batches of ``batch_size``: a partly labelled fit's labelled rows share
batches with the others, as many as chance puts there (0.37 of 200 rows at 100 labels of
54,000). With ``labelled_every = K`` the labelled rows get batches of their own, as Pyro's
ss-VAE example gives them (one labelled batch every ⌊N / labelled⌋ batches there):

.. code-block:: text

    step i (0-based) is labelled  when  i mod K == 1   (steps 1, K + 1, 2K + 1, ...)
    unlabelled steps              one permutation of the unlabelled rows, batches of B
    labelled steps                min(B, L) rows each from permutations of the L labelled
                                  rows, one after the other (a labelled row comes back as
                                  often as the cadence asks, each once per pass)
    the epoch ends                with the unlabelled step that uses its last rows

Everything an epoch takes is one flat tensor of row indices (``TrainState.perm``, which the
checkpoint keeps); where each step starts follows from the counts alone, so a fit resumed
mid-epoch takes the same rows at the same steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_vae.config import TrainConfig
from pyro_vae.data import Data
from pyro_vae.distributed import SINGLE, World


def check_labelled_every(cfg: TrainConfig) -> None:
    """The cadence alone: ``None`` or an integer of at least 2 (1 would leave no step for
    the unlabelled rows)."""
    every = cfg.labelled_every
    if every is None:
        return
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"labelled_every (--labelled-every) must be an integer of at least 2, "
                         f"one labelled batch every K steps, got {every!r}")


def labelled_rows(data: Data) -> tuple[Tensor, Tensor]:
    """The training rows whose label the story sees, and the others: two index tensors."""
    known = data.train.known
    if known is None:
        known = torch.ones(len(data.train), dtype=torch.bool)
    known = known.cpu()
    return torch.nonzero(known).flatten(), torch.nonzero(~known).flatten()


def check_batches(cfg: TrainConfig, data: Data, world: World = SINGLE) -> None:
    """``labelled_every`` needs rows of both kinds, images held in memory, one process."""
    check_labelled_every(cfg)
    if cfg.labelled_every is None:
        return
    what = f"--labelled-every {cfg.labelled_every}"
    if not isinstance(data.train.x, Tensor):
        raise ValueError(f"{what}: the training images are streamed from their file; labelled "
                         f"batches of their own need them held in memory (--stream off)")
    if world.parallel:
        raise ValueError(f"{what}: labelled batches of their own are not supported with "
                         f"several processes yet; run one process")
    labelled, unlabelled = labelled_rows(data)
    if len(labelled) == 0 or len(unlabelled) == 0 or data.train.labels is None:
        kept = "no" if len(labelled) == 0 or data.train.labels is None else "every"
        raise ValueError(f"{what}: the story sees {kept} training label; labelled batches of "
                         f"their own are for a partly labelled story that keeps some labels "
                         f"(e.g. --model m2 --labels 100)")


def layout(unlabelled: int, labelled: int, batch_size: int, every: int) -> list[int]:
    """Rows per step of an epoch, a labelled step as a negative count (−rows): ``unlabelled``
    and ``labelled`` rows, batches of ``batch_size``, a labelled step where i mod K == 1."""
    sizes, left, size_l = [], unlabelled, min(batch_size, labelled)
    while left > 0:
        if len(sizes) % every == 1:
            sizes.append(-size_l)
        else:
            sizes.append(min(batch_size, left))
            left -= sizes[-1]
    return sizes


class Batches:
    """The rows of every step of an epoch, for one fit (see the module's text)."""

    def __init__(self, cfg: TrainConfig, data: Data, world: World = SINGLE) -> None:
        self.batch_size, self.every, self.n = cfg.batch_size, cfg.labelled_every, len(data.train)
        self.starts: list[int] = []
        if self.every is None:
            steps = math.ceil(self.n / self.batch_size)
            # Data-parallel: a last batch with fewer rows than ranks is left out (a rank with
            # no rows cannot take part in the step); the permutation changes, so do the rows.
            short = self.n - (steps - 1) * self.batch_size < world.size
            self.steps = steps - 1 if steps > 1 and short else steps
            return
        self.labelled, self.unlabelled = labelled_rows(data)
        self.sizes = layout(len(self.unlabelled), len(self.labelled), self.batch_size, self.every)
        self.steps = len(self.sizes)
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + abs(size))

    @property
    def labelled_steps(self) -> int:
        """How many steps of an epoch take labelled rows (0 for mixed batches)."""
        return sum(size < 0 for size in self.sizes) if self.every is not None else 0

    def permutation(self, generator: torch.Generator, device: torch.device) -> Tensor:
        """Every row index the epoch takes, in step order (``TrainState.perm``)."""
        if self.every is None:
            return torch.randperm(self.n, generator=generator).to(device)
        unlabelled = self.unlabelled[torch.randperm(len(self.unlabelled), generator=generator)]
        wanted = -sum(size for size in self.sizes if size < 0)
        passes = [self.labelled[torch.randperm(len(self.labelled), generator=generator)]
                  for _ in range(math.ceil(wanted / len(self.labelled)))]
        labelled = torch.cat(passes)[:wanted]
        pieces, u, lab = [], 0, 0
        for size in self.sizes:
            if size < 0:
                pieces.append(labelled[lab:lab - size])
                lab -= size
            else:
                pieces.append(unlabelled[u:u + size])
                u += size
        return torch.cat(pieces).to(device)

    def rows(self, perm: Tensor, step: int) -> Tensor:
        """The rows of step ``step`` of the epoch whose :meth:`permutation` is ``perm``."""
        if self.every is None:
            return perm[step * self.batch_size:(step + 1) * self.batch_size]
        if len(perm) != self.starts[-1]:
            raise ValueError(f"the epoch in progress takes {len(perm)} rows, but labelled batches "
                             f"every {self.every} steps of {self.batch_size} take "
                             f"{self.starts[-1]}: the checkpoint is not this fit's")
        return perm[self.starts[step]:self.starts[step + 1]]
