"""Images that do not fit in memory: rows read in batches, as the fit asks for them.

A *row source* gives rows of an image set by index without holding the set:

- :class:`NpyRows`: a NumPy ``.npy`` file ``[N, H, W]`` or ``[N, C, H, W]`` opened as a
  memory map (uint8 pixels are scaled to [0, 1]); only the pages of the rows read are
  brought in, and the OS may drop them again;
- :class:`FolderRows`: a folder of image files (PNG, JPEG), one image per file, decoded by
  ``torchvision.io`` when read.

:class:`StepBatches` turns a source and an epoch's permutation into the training batches of
one rank: step ``s`` holds rows ``perm[s·B:(s+1)·B]`` cut into ``size`` contiguous shares
(as :func:`pyro_vae.distributed.shard` cuts a resident batch), of which this rank reads its
own. :func:`batch_loader` reads them through a ``torch.utils.data.DataLoader`` with worker
processes and pinned memory (for a CUDA device), from any step (a resumed epoch).

:func:`streamed_data` makes a :class:`~pyro_vae.data.Data` whose training split is a
:class:`StreamedSplit`: :func:`~pyro_vae.fit.fit` trains on it as on resident images, with
the same draws. Not yet offered by ``pyro-vae train`` (no flag, no automatic choice by size).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pyro_vae.config import DataConfig
from pyro_vae.data import Data, Split
from pyro_vae.distributed import SINGLE, World, shard
from pyro_vae.validation import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class RowSource(Protocol):
    """Rows of an image set, read on demand."""

    image_shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def rows(self, index: np.ndarray) -> Tensor:
        """Images ``index`` (``[B]`` integers) as float32 in [0, 1], flattened ``[B, D]``."""
        ...


def _unit(x: np.ndarray, where: str) -> Tensor:
    """Pixels as float32 in [0, 1]: uint8 over 255, floats as they are (checked)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float().div_(255)
    t = t.float()
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise DataError(f"{where}: pixel values must lie in [0, 1] (or be uint8)")
    return t


class NpyRows:
    """Rows of a ``.npy`` file, read through a memory map opened for each read and closed
    after it: the pages read leave this process's resident memory with the map, and the
    source pickles to a DataLoader worker as a path, not as the array."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            probe = np.load(self.path, mmap_mode="r")  # reads the header only
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path} cannot be read as a .npy array ({err})") from None
        shape, dtype, fortran = probe.shape, probe.dtype, np.isfortran(probe) and probe.ndim > 1
        self.offset = probe.offset
        del probe
        if fortran or len(shape) not in (3, 4):
            raise DataError(f"{self.path} holds an array of shape {list(shape)}"
                            f"{' in Fortran order' if fortran else ''}; expected images "
                            f"[N, H, W] or [N, C, H, W] in C order")
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        self.image_shape = self.shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: np.ndarray) -> Tensor:
        index = np.asarray(index)
        # Reading in file order touches each page once; the rows then go back to index's order.
        order = np.argsort(index, kind="stable")
        array = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        try:
            block = np.empty((len(index), *self.image_shape), self.dtype)
            block[order] = array[index[order]]
        finally:
            del array  # unmapped: its pages no longer count against this process
        return _unit(block, str(self.path)).reshape(len(index), -1)


class FolderRows:
    """Rows of a folder of image files (sorted by name), decoded when read."""

    def __init__(self, folder: Path) -> None:
        from torchvision.io import ImageReadMode, decode_image, read_file

        def read(p: Path) -> Tensor:
            with warnings.catch_warnings():  # torchvision's notice of a future move to torchcodec
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_image(read_file(str(p)), ImageReadMode.UNCHANGED)

        self._read = read
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{self.folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        first = self._image(0)
        self.image_shape = tuple(first.shape) if first.shape[0] > 1 else tuple(first.shape[1:])

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> Tensor:
        return self._read(self.files[i])  # [C, H, W] uint8

    def rows(self, index: np.ndarray) -> Tensor:
        images = [self._image(int(i)) for i in index]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise DataError(f"{self.folder}: images differ in size ({sorted(shapes)[:2]}); "
                            f"every image must have the shape of the first")
        return torch.stack(images).float().div_(255).reshape(len(index), -1)


class StepBatches(Dataset):
    """Item ``s``: this rank's rows of training step ``s`` of the epoch (``[B_r, D]``)."""

    def __init__(self, source: RowSource, perm: Tensor, batch_size: int,
                 world: World = SINGLE) -> None:
        self.source, self.batch_size, self.world = source, batch_size, world
        self.perm = perm.cpu()

    def __len__(self) -> int:
        return math.ceil(len(self.perm) / self.batch_size)

    def index(self, step: int) -> Tensor:
        """The dataset rows this rank reads at ``step``."""
        rows = self.perm[step * self.batch_size:(step + 1) * self.batch_size]
        return shard(rows, self.world)

    def __getitem__(self, step: int) -> Tensor:
        return self.source.rows(self.index(step).numpy())


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def batch_loader(batches: StepBatches, start: int = 0, workers: int = 2,
                 device: torch.device | None = None) -> DataLoader:
    """The batches of ``batches`` from step ``start`` on, in order, read ahead by
    ``workers`` processes (0: in this process), in pinned memory when ``device`` is CUDA."""
    # Its own generator: a DataLoader seeds its workers from the global one otherwise, which
    # would shift every later draw of the fit (workers draw nothing here).
    return DataLoader(batches, batch_size=None, sampler=_From(start, len(batches)),
                      num_workers=workers, pin_memory=device is not None and device.type == "cuda",
                      prefetch_factor=2 if workers else None, persistent_workers=False,
                      generator=torch.Generator().manual_seed(0))


class Rows:
    """The images of a streamed split as ``x``: ``x[a:b]`` and ``x[index]`` read those rows
    (``[B, D]`` float32 on the split's device); nothing is held between reads, except the
    batches a :meth:`StreamedSplit.plan` reads ahead."""

    def __init__(self, split: "StreamedSplit") -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), int(np.prod(self.split.source.image_shape)))

    def __getitem__(self, key: slice | Tensor) -> Tensor:
        wanted = self.split.rows[key] if isinstance(key, slice) else \
            self.split.rows[torch.as_tensor(key).cpu().numpy()]
        return self.split.read(wanted).to(self.split.device, non_blocking=True)


class StreamedSplit:
    """A split whose images stay in their file: :class:`~pyro_vae.data.Split`'s interface
    (``x``, ``labels``, ``fields()``, ``to()``, ``len``) over rows ``rows`` of ``source``.

    :class:`~pyro_vae.data.Data` and the fit use it as they use a resident split: a training
    batch reads its rows, binarized afterwards in the fit's process with the fit's random
    stream (so a streamed fit makes the draws of the resident one). :meth:`plan` lets the
    fit announce an epoch's batches, which a DataLoader then reads ahead in workers.
    """

    def __init__(self, source: RowSource, rows: np.ndarray, labels: Tensor | None = None,
                 device: torch.device | str = "cpu", workers: int = 2) -> None:
        self.source, self.rows, self.labels = source, np.asarray(rows), labels
        self.device, self.workers = torch.device(device), workers
        self._ahead: tuple[StepBatches, int, object] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def x(self) -> Rows:
        return Rows(self)

    def fields(self) -> dict[str, Tensor]:
        return {} if self.labels is None else {"y": self.labels}

    def to(self, device: torch.device | str) -> "StreamedSplit":
        labels = None if self.labels is None else self.labels.to(device)
        return StreamedSplit(self.source, self.rows, labels, device, self.workers)

    def plan(self, perm: Tensor, batch_size: int, world: World, start: int) -> None:
        """The fit will read steps ``start, start + 1, ...`` of ``perm`` (positions in this
        split), this rank's share of each: read them ahead through :func:`batch_loader`."""
        batches = StepBatches(_Subset(self.source, self.rows), perm, batch_size, world)
        loader = batch_loader(batches, start, self.workers, self.device)
        self._ahead = (batches, start, iter(loader))

    def read(self, wanted: np.ndarray) -> Tensor:
        """Source rows ``wanted``: the next batch read ahead when it is that one, else read now."""
        if self._ahead is not None:
            batches, step, it = self._ahead
            if step < len(batches) and np.array_equal(self.rows[batches.index(step).numpy()], wanted):
                self._ahead = (batches, step + 1, it)
                return next(it)
            self._ahead = None  # the fit went another way: stop reading ahead
        return self.source.rows(wanted)


class _Subset:
    """Rows ``rows`` of ``source`` as a source of their own (positions 0..len−1)."""

    def __init__(self, source: RowSource, chosen: np.ndarray) -> None:
        self.source, self.chosen, self.image_shape = source, chosen, source.image_shape

    def __len__(self) -> int:
        return len(self.chosen)

    def rows(self, index: np.ndarray) -> Tensor:
        return self.source.rows(self.chosen[index])


def open_rows(path: Path) -> RowSource:
    """A ``.npy`` file or a folder of images as a row source."""
    path = Path(path)
    if path.is_dir():
        return FolderRows(path)
    if path.suffix == ".npy":
        return NpyRows(path)
    raise DataError(f"{path}: a streamed source is a .npy file or a folder of image files")


def resident_bytes(source: RowSource) -> int:
    """What the source would take in memory as the fit's float32 tensor."""
    return len(source) * int(np.prod(source.image_shape)) * 4


# Validation and test images are held in memory (the fit scores them every epoch), at most
# this many of each: 10,000 28×28 images are 31 MB as float32.
RESIDENT_CAP = 10_000


def streamed_data(path: Path, cfg: DataConfig, binarize: str, workers: int = 2,
                  resident_cap: int = RESIDENT_CAP) -> Data:
    """A :class:`~pyro_vae.data.Data` whose training split stays in ``path`` (a ``.npy``
    file or an image folder) and is read per batch; validation and test are the first
    ``resident_cap`` images of their splits, held in memory. The split is drawn from
    ``cfg.split_seed`` with ``cfg.val_fraction`` and ``cfg.test_fraction`` (a
    :class:`~pyro_vae.config.DataConfig`); ``binarize`` is resolved (``dynamic``, ...)."""
    source = open_rows(path)
    n = len(source)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed)).numpy()
    n_val, n_test = round(cfg.val_fraction * n), round(cfg.test_fraction * n)
    if n - n_val - n_test < 1 or n_val < 1:
        raise DataError(f"{path}: {n} images leave none to train or to validate on")
    val, test, train = perm[:n_val], perm[n_val:n_val + n_test], perm[n_val + n_test:]
    held = [Split(source.rows(np.sort(rows[:resident_cap])), None) for rows in (val, test)]
    return Data(StreamedSplit(source, train, workers=workers), held[0], held[1],
                tuple(source.image_shape), binarize, str(path))
