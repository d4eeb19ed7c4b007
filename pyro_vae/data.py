"""Images as tensors: named datasets, user arrays, fixed-seed splits, binarization.

Every split is held whole, as one float tensor ``[N, D]`` with pixels in
[0, 1], on the training device; batches are index slices of it, drawn from a
fresh permutation each epoch. No per-sample DataLoader is involved.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from pyro_vae.config import DataConfig
from pyro_vae.registry import Registry
from pyro_vae.traces import index_rows
from pyro_vae.validation import (DataError, check_binary, check_image_shape, check_images,
                                 check_labels)

DATASETS: Registry = Registry("dataset")
BINARIZE_MODES = ("auto", "dynamic", "threshold", "none")


@dataclass(frozen=True)
class RawImages:
    """Images as loaded, before splitting: ``train_x`` is ``[N, *image_shape]``."""

    train_x: np.ndarray
    train_y: np.ndarray | None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    source: str = "array"


@dataclass(frozen=True)
class Split:
    """One split: ``x`` is ``[N, D]`` in [0, 1]; ``labels`` is ``[N]`` or ``None``."""

    x: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        labels = None if self.labels is None else self.labels.to(device)
        return Split(self.x.to(device), labels)

    def fields(self) -> dict[str, Tensor]:
        """The per-row extras a story may ask for by keyword: ``y`` (labels ``[N]``) when known."""
        return {} if self.labels is None else {"y": self.labels}


@dataclass(frozen=True)
class Data:
    """Train, validation and test splits of one image set, and how to binarize it.

    ``binarize`` is resolved (``dynamic``, ``threshold`` or ``none``). Under
    ``dynamic`` the splits hold grey levels, training batches are fresh
    Bernoulli draws, and :meth:`eval_split` returns one fixed draw.
    """

    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, ...]
    binarize: str = "none"
    source: str = "array"

    @property
    def data_dim(self) -> int:
        return int(self.train.x.shape[1])

    def to(self, device: torch.device | str) -> "Data":
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device))

    def train_batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows ``index`` of the training images, binarized as configured (``[B, D]``), and
        the same rows of the per-row extras (:meth:`Split.fields`)."""
        x = self.train.x[index]
        fields = index_rows(self.train.fields(), index)
        return (bernoulli_draw(x) if self.binarize == "dynamic" else x), fields

    def eval_split(self, name: str, seed: int = 0) -> Tensor:
        """A whole split for evaluation, ``[N, D]``; a dynamic binarization is drawn once, seeded."""
        x = getattr(self, name).x
        if self.binarize != "dynamic":
            return x
        gen = torch.Generator(device=x.device).manual_seed(seed)
        return torch.bernoulli(x, generator=gen)


def bernoulli_draw(p: Tensor) -> Tensor:
    """x ~ Bernoulli(p) elementwise, as 0./1. of ``p``'s dtype and shape.

    Comparing with a uniform draw is the same distribution as ``torch.bernoulli``
    and about 3.5× faster on CPU (0.27 vs 0.98 ms for a 128×784 batch).
    """
    return (torch.rand_like(p) < p).to(p.dtype)


def default_data_root() -> Path:
    """``$PYRO_VAE_DATA`` if set, else the per-user cache folder."""
    env = os.environ.get("PYRO_VAE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyro-vae" / "data"


@DATASETS.register("digits")
def _digits(cfg: DataConfig) -> RawImages:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, grey levels 0–16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawImages(bunch.images / 16.0, bunch.target, source="sklearn digits")


def _torchvision(cls_name: str) -> Callable[[DataConfig], RawImages]:
    def load(cfg: DataConfig) -> RawImages:
        import torchvision.datasets as tvd

        root = Path(cfg.root).expanduser() if cfg.root else default_data_root()
        cls = getattr(tvd, cls_name)
        try:
            train = cls(str(root), train=True, download=cfg.download)
            test = cls(str(root), train=False, download=cfg.download)
        except RuntimeError as err:
            raise DataError(
                f"{cls_name} files not found under {root / cls_name / 'raw'} ({err}). "
                f"Pass --download to fetch them, or point --data-root (or $PYRO_VAE_DATA) "
                f"at the folder that holds {cls_name}/raw."
            ) from None
        return RawImages(train.data.numpy(), train.targets.numpy(), test.data.numpy(),
                         test.targets.numpy(), source=f"torchvision {cls_name} at {root}")

    load.__doc__ = f"torchvision's {cls_name}: 28×28 grey images with an official test split."
    return load


DATASETS.register("mnist")(_torchvision("MNIST"))
DATASETS.register("fashion-mnist")(_torchvision("FashionMNIST"))
DATASETS.register("kmnist")(_torchvision("KMNIST"))


def load_array_file(path: Path) -> RawImages:
    """Images from ``.npy`` (an array) or ``.npz`` (key ``x`` or ``images``, optional
    ``y``/``labels``; ``x_test``/``y_test`` give an explicit test split)."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"data file {path}: expected a .npy or .npz file")
    try:
        return _read_arrays(path)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        # np.load refuses object (pickled) arrays with a ValueError; never retry with pickles
        raise DataError(f"data file {path} cannot be read as plain numeric arrays ({err}); "
                        f"pickled object arrays are never loaded") from None


def _read_arrays(path: Path) -> RawImages:
    """The arrays of ``path`` as :class:`RawImages`, refusing pickled objects."""
    if path.suffix == ".npy":
        return RawImages(np.load(path, allow_pickle=False), None, source=str(path))
    with np.load(path, allow_pickle=False) as arrays:
        keys = set(arrays.files)
        xkey = next((k for k in ("x", "images", "x_train") if k in keys), None)
        if xkey is None:
            raise DataError(f"{path}: expected an array named 'x' or 'images', found {sorted(keys)}")
        ykey = next((k for k in ("y", "labels", "y_train") if k in keys), None)
        get = lambda k: arrays[k] if k in keys else None  # noqa: E731
        return RawImages(arrays[xkey], get(ykey) if ykey else None, get("x_test"),
                         get("y_test"), source=str(path))


def load_raw(cfg: DataConfig) -> RawImages:
    """The images named by ``cfg.name``: a registered dataset or an array file."""
    if cfg.name.endswith((".npz", ".npy")) or os.sep in cfg.name:
        return load_array_file(Path(cfg.name).expanduser())
    return DATASETS.lookup(cfg.name)(cfg)


def resolve_binarize(mode: str, binary_likelihood: bool) -> str:
    """``auto`` becomes ``dynamic`` for a binary likelihood and ``none`` otherwise."""
    if mode not in BINARIZE_MODES:
        raise DataError(f"binarize must be one of {', '.join(BINARIZE_MODES)}, got {mode!r}")
    if mode == "auto":
        return "dynamic" if binary_likelihood else "none"
    return mode


def _to_unit(x: np.ndarray, name: str, must_be_binary: bool = False) -> Tensor:
    """Flatten ``[N, *shape]`` to ``[N, D]`` float32 in [0, 1] (0–255 data is divided by 255;
    integer data that is all 0 and 1 is taken as binary, not as nearly black)."""
    check_images(x, name)
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(len(x), -1)
    if float(t.max()) > 1.0:
        t = t / 255.0
    if must_be_binary:
        check_binary(t, name)
    return t


def _labels(y: np.ndarray | None, n: int, name: str) -> Tensor | None:
    if y is None:
        return None
    check_labels(y, n, name)
    return torch.as_tensor(np.asarray(y)).long()


def _cut(x: Tensor, y: Tensor | None, idx: Tensor) -> Split:
    return Split(x[idx], None if y is None else y[idx])


def split_images(raw: RawImages, cfg: DataConfig, binarize: str,
                 binary_likelihood: bool = False) -> Data:
    """Fixed-seed train/validation/test split; the official test split where one exists.

    With a binary likelihood and no binarization, pixels must be 0 or 1; that is checked
    before the shuffle, so an error names the sample's index in the file."""
    must_be_binary = binary_likelihood and binarize == "none"
    x = _to_unit(raw.train_x, f"{raw.source} images", must_be_binary)
    y = _labels(raw.train_y, len(x), f"{raw.source} labels")
    gen = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(x), generator=gen)
    if raw.test_x is not None:
        check_image_shape(np.shape(raw.test_x)[1:], np.shape(raw.train_x)[1:],
                          f"{raw.source} test images", "the training set")
        test = Split(_to_unit(raw.test_x, f"{raw.source} test images", must_be_binary),
                     _labels(raw.test_y, len(raw.test_x), f"{raw.source} test labels"))
        n_test = 0
    else:
        n_test = int(round(cfg.test_fraction * len(x)))
        test = _cut(x, y, perm[:n_test])
    n_val = int(round(cfg.val_fraction * len(x)))
    val = _cut(x, y, perm[n_test:n_test + n_val])
    train = _cut(x, y, perm[n_test + n_val:])
    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise DataError(f"{raw.source}: {len(x)} images leave an empty split "
                        f"(train {len(train)}, validation {len(val)}, test {len(test)})")
    if binarize == "threshold":
        train, val, test = ((Split((s.x > 0.5).float(), s.labels)) for s in (train, val, test))
    return Data(train, val, test, tuple(raw.train_x.shape[1:]), binarize, raw.source)


def load_data(cfg: DataConfig, binary_likelihood: bool = True) -> Data:
    """Load, check, scale and split the images that ``cfg`` names."""
    binarize = resolve_binarize(cfg.binarize, binary_likelihood)
    return split_images(load_raw(cfg), cfg, binarize, binary_likelihood)


def from_tensor(x: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None,
                cfg: DataConfig = DataConfig(name="tensor"), binary_likelihood: bool = True) -> Data:
    """Python API: split images given as ``[N, *image_shape]`` (0–1 or 0–255)."""
    as_np = lambda a: a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)  # noqa: E731
    raw = RawImages(as_np(x), None if labels is None else as_np(labels), source="tensor")
    binarize = resolve_binarize(cfg.binarize, binary_likelihood)
    return split_images(raw, cfg, binarize, binary_likelihood)
