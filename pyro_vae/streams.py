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

Not yet wired to ``pyro-vae train`` (see the issue 13 notes): the fit still takes a
resident :class:`~pyro_vae.data.Data`.
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
    return DataLoader(batches, batch_size=None, sampler=_From(start, len(batches)),
                      num_workers=workers, pin_memory=device is not None and device.type == "cuda",
                      prefetch_factor=2 if workers else None, persistent_workers=False)


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
