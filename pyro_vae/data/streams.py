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
:class:`StreamedSplit`: :func:`~pyro_vae.infer.fit` trains on it as on resident images, with
the same draws; its validation and test splits are :class:`HeldOutSplit` s, at most
:data:`HELD_OUT_CAP` rows each, read whole when asked for and not kept.

``pyro-vae train --stream auto|on|off`` (:attr:`~pyro_vae.config.DataConfig.stream`):
:func:`resolve_stream` makes the choice (``auto``: by size against :data:`STREAM_SHARE` of the
available memory), :func:`load_images` and :func:`split_or_stream` load and split accordingly.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pyro_vae.config import DataConfig
from pyro_vae.data.images import DATASETS, Data, RawImages, load_raw, split_images
from pyro_vae.distributed import SINGLE, World, shard
from pyro_vae.memory import available_bytes
from pyro_vae.pixels import Pixels
from pyro_vae.validation import DataError, check_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class RowSource(Protocol):
    """Rows of an image set, read on demand."""

    image_shape: tuple[int, ...]
    dtype: np.dtype
    """The pixels' type as stored (uint8 for decoded image files)."""

    def __len__(self) -> int: ...

    def scan(self) -> float:
        """Check the pixels once where that needs a pass; the divisor to [0, 1]."""
        ...

    def rows(self, index: np.ndarray) -> Tensor:
        """Images ``index`` (``[B]`` integers) as float32 in [0, 1], flattened ``[B, D]``."""
        ...


def _unit(x: np.ndarray, scale: float) -> Tensor:
    """Pixels as float32 in [0, 1]: divided by ``scale`` (255 for 0–255 pixels, else 1)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return t.div_(scale) if scale != 1 else t


# Rows per block when a .npy file is scanned once, whole: 8 MB of pixels at a time, each
# block's pages unmapped before the next (min and max make no temporaries).
SCAN_BYTES = 8 * 2 ** 20


class NpyRows:
    """Rows of a ``.npy`` file, read through a memory map opened for each read and closed
    after it: the pages read leave this process's resident memory with the map, and the
    source pickles to a DataLoader worker as a path, not as the array.

    Pixels are brought to [0, 1] as the resident path does (:func:`pyro_vae.data.split_images`):
    divided by 255 when any exceeds 1. That needs one pass over the file, made (and the pixels
    checked: finite, in [0, 255]) by :meth:`scan` before the first rows are read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            probe = np.load(self.path, mmap_mode="r")  # reads the header only
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path} cannot be read as a .npy array ({err})") from None
        shape, dtype, fortran = probe.shape, probe.dtype, np.isfortran(probe) and probe.ndim > 1
        self.offset = probe.offset
        del probe
        if fortran or len(shape) not in (2, 3, 4):
            raise DataError(f"{self.path} holds an array of shape {list(shape)}"
                            f"{' in Fortran order' if fortran else ''}; expected images "
                            f"[N, D], [N, H, W] or [N, C, H, W] in C order")
        if not (np.issubdtype(dtype, np.number) or dtype == bool):
            raise DataError(f"{self.path}: expected a numeric array, got dtype {dtype}")
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        self.image_shape = self.shape[1:]
        self.scale: float | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self) -> np.memmap:
        return np.memmap(self.path, self.dtype, "r", self.offset, self.shape)

    def scan(self) -> float:
        """Check every pixel, block by block, and fix the divisor (255 or 1); once."""
        if self.scale is None:
            rows = max(1, SCAN_BYTES // max(1, int(np.prod(self.image_shape)) * self.dtype.itemsize))
            top = 0.0
            for lo in range(0, len(self), rows):
                block = self._map()[lo:lo + rows]
                low, high = float(block.min()), float(block.max())  # NaN makes both NaN
                if not 0 <= low <= high <= 255:  # the sample named, as in memory
                    check_images(np.asarray(block), f"{self.path} (rows from {lo})")
                top = max(top, high)
                del block  # unmapped: the scan keeps no pages of the file
            self.scale = 255.0 if top > 1 else 1.0
        return self.scale

    def rows(self, index: np.ndarray) -> Tensor:
        scale = self.scan()
        index = np.asarray(index)
        # Reading in file order touches each page once; the rows then go back to index's order.
        order = np.argsort(index, kind="stable")
        array = self._map()
        try:
            block = np.empty((len(index), *self.image_shape), self.dtype)
            block[order] = array[index[order]]
        finally:
            del array  # unmapped: its pages no longer count against this process
        return _unit(block, scale).reshape(len(index), -1)


def _decode(path: Path) -> Tensor:
    """One image file as uint8 ``[C, H, W]``."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():  # torchvision's notice of a future move to torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_image(read_file(str(path)), ImageReadMode.UNCHANGED)
        except RuntimeError as err:  # empty, truncated or not an image: torchvision's C++ says
            parts = str(err).splitlines()[0].split(", ") if str(err) else ["unreadable"]
            reason = parts[0] if len(parts) == 1 else f"{parts[0]}: {parts[-1]}"
            raise DataError(f"{path} cannot be read as an image ({reason})") from None


class FolderRows:
    """Rows of a folder of image files (sorted by name), decoded when read; 8-bit pixels
    over 255 (a folder held in memory is read through it too, so both paths agree)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{self.folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        first = self._image(0)
        self.image_shape = tuple(first.shape) if first.shape[0] > 1 else tuple(first.shape[1:])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    def scan(self) -> float:
        return 255.0  # decoded files are 8-bit

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> Tensor:
        return _decode(self.files[i])  # [C, H, W] uint8

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
        return type(self)(self.source, self.rows, labels, device, self.workers)

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


class HeldOutSplit(StreamedSplit):
    """Validation or test rows of a streamed set: ``x`` reads them all (``[N, D]``) each
    time it is asked for, and nothing holds them in between (the fit keeps the one
    binarized draw it scores every epoch)."""

    @property
    def x(self) -> Tensor:  # type: ignore[override]
        return Rows(self)[:]


class Thresholded:
    """A source whose pixels are binarized at 0.5 when read (``--binarize threshold``)."""

    def __init__(self, source: RowSource) -> None:
        self.source, self.image_shape, self.dtype = source, source.image_shape, source.dtype

    def __len__(self) -> int:
        return len(self.source)

    def scan(self) -> float:
        return self.source.scan()

    def rows(self, index: np.ndarray) -> Tensor:
        return (self.source.rows(index) > 0.5).float()


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


# Validation and test images of a streamed set: at most this many rows of each (the first of
# the split's random order), read whole when asked for. The fit holds one binarized copy of
# the validation rows: 10,000 28×28 images are 31 MB as float32.
HELD_OUT_CAP = 10_000
STREAM_WORKERS = 2  # processes reading batches ahead of the fit


def streamed_data(path: Path | RowSource, cfg: DataConfig, binarize: str,
                  pixels: bool | Pixels = Pixels.ANY, workers: int = STREAM_WORKERS,
                  held_out_cap: int = HELD_OUT_CAP) -> Data:
    """A :class:`~pyro_vae.data.Data` whose training split stays in ``path`` (a ``.npy``
    file, an image folder, or a source already open) and is read per batch. The rows of
    each split are those :func:`~pyro_vae.data.split_images` gives the same images held in
    memory (``cfg.split_seed``, ``cfg.test_fraction``, ``cfg.val_fraction``); validation and
    test keep the first ``held_out_cap`` of theirs. ``binarize`` is resolved (``dynamic``, ...);
    ``pixels`` is what the story scores (refused: see :func:`_check_streamable`)."""
    source = path if hasattr(path, "rows") else open_rows(Path(path))
    _check_streamable(source, binarize, Pixels(int(pixels)))
    source.scan()  # before the workers fork, so that they inherit the divisor
    if binarize == "threshold":
        source = Thresholded(source)
    n = len(source)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed)).numpy()
    n_test, n_val = int(round(cfg.test_fraction * n)), int(round(cfg.val_fraction * n))
    if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        raise DataError(f"{_where(source)}: {n} images leave an empty split (train "
                        f"{n - n_val - n_test}, validation {n_val}, test {n_test})")
    test, val = perm[:n_test][:held_out_cap], perm[n_test:n_test + n_val][:held_out_cap]
    train = perm[n_test + n_val:].copy()  # the whole permutation is not kept
    # In the split's order, as in memory (the seeded binarized draw of each row is the same).
    held = [HeldOutSplit(source, rows, workers=0) for rows in (val, test)]
    return Data(StreamedSplit(source, train, workers=workers), held[0], held[1],
                tuple(source.image_shape), binarize, _where(source))


def _where(source: RowSource) -> str:
    return str(getattr(source, "path", None) or getattr(source, "folder", None) or
               _where(source.source))


def _check_streamable(source: RowSource, binarize: str, pixels: Pixels) -> None:
    """Streamed pixels are checked per block, not by the fit's whole-split checks: a story
    scoring {0, 1} or 8-bit pixels as they are (``--binarize none``) is refused, and a
    dequantized one needs 8-bit pixels (uint8 files, image folders)."""
    if binarize == "none" and pixels != Pixels.ANY:
        kind = "0 or 1" if pixels == Pixels.BINARY else "on the 8-bit grid"
        raise DataError(f"--stream on with --binarize none: the story scores pixels {kind}, "
                        f"which the fit checks on images held in memory; use --binarize "
                        f"dynamic or threshold, or --stream off")
    if binarize == "dequantize" and source.dtype != np.uint8:
        raise DataError(f"--stream on with --binarize dequantize: {_where(source)} holds "
                        f"{source.dtype} pixels; streamed dequantization needs uint8 pixels")


STREAM_MODES = ("auto", "on", "off")
# ``auto`` streams when the training set as float32 exceeds this share of the available
# memory: the resident path briefly holds the file's array, the float32 set and its splits
# (about twice the float32 size), which a quarter leaves room for.
STREAM_SHARE = 0.25


def streamable_path(name: str) -> Path | None:
    """The ``.npy`` file or image folder ``name`` names; ``None`` for a registered dataset or
    anything else (an .npz file is read whole)."""
    if name in DATASETS:
        return None
    path = Path(name).expanduser()
    return path if path.is_dir() or (path.suffix == ".npy" and path.is_file()) else None


def resolve_stream(cfg: DataConfig, say: Callable[[str], None] | None = None) -> DataConfig:
    """``cfg`` with ``stream`` chosen, ``on`` or ``off`` (``auto``: on when the training
    images' float32 size exceeds :data:`STREAM_SHARE` of :func:`available_bytes`); ``say``
    receives one line telling which and why."""
    if cfg.stream not in STREAM_MODES:
        raise DataError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {cfg.stream!r}")
    path = streamable_path(cfg.name)
    if path is None:
        if cfg.stream == "on":
            raise DataError(f"--stream on: {cfg.name} is neither a .npy file nor a folder of "
                            f"image files (named datasets and .npz files are read whole); use "
                            f"--stream off or auto")
        chosen, why = "off", ""
    elif cfg.stream == "auto":
        size, limit = _float32_bytes(path), STREAM_SHARE * available_bytes()
        chosen = "on" if size > limit else "off"
        why = (f"--stream auto: {size / 1e9:.3g} GB as float32 {'>' if chosen == 'on' else '≤'}"
               f" {limit / 1e9:.3g} GB, {STREAM_SHARE:.0%} of the available memory")
    else:
        chosen, why = cfg.stream, f"--stream {cfg.stream}"
    if say is not None and path is not None:  # a named dataset has no choice to tell
        how = (f"streamed from {path} (validation and test: at most {HELD_OUT_CAP:,} rows each)"
               if chosen == "on" else "held in memory")
        say(f"training images {how} ({why})")
    return dataclasses.replace(cfg, stream=chosen)


def _float32_bytes(path: Path) -> int:
    """The images' size as float32; 0 for a file that cannot be streamed (the loader that
    holds it in memory then says what is wrong with it)."""
    try:
        return resident_bytes(open_rows(path))
    except DataError:
        return 0


def load_images(cfg: DataConfig) -> RawImages:
    """The images ``cfg`` names, before splitting: in memory, or (``stream`` resolving to
    ``on``) a :class:`RawImages` whose ``train_x`` is the open row source."""
    cfg = resolve_stream(cfg)
    path = streamable_path(cfg.name)
    if cfg.stream == "on":
        return RawImages(open_rows(path), None, source=str(path))
    if path is not None and path.is_dir():
        folder = FolderRows(path)
        x = folder.rows(np.arange(len(folder))).reshape(len(folder), *folder.image_shape)
        return RawImages(x.numpy(), None, source=str(path))
    return load_raw(cfg)


def split_or_stream(raw: RawImages, cfg: DataConfig, binarize: str,
                    pixels: bool | Pixels = False) -> Data:
    """:func:`~pyro_vae.data.split_images`, or :func:`streamed_data` for a streamed source."""
    if hasattr(raw.train_x, "rows"):
        return streamed_data(raw.train_x, cfg, binarize, pixels)
    return split_images(raw, cfg, binarize, pixels)
