"""Checks that reject bad input before any work starts, naming what is wrong and where."""

from __future__ import annotations

from typing import Any

import numpy as np

from pyro_vae.deprecated import MOVED_NAMES, forwarder


class DataError(ValueError):
    """Images or labels that cannot be fitted; the message says which and why."""


def _first_bad_index(mask: np.ndarray) -> int:
    """Index along axis 0 of the first sample where ``mask`` is true anywhere."""
    per_sample = mask.reshape(len(mask), -1).any(axis=1)
    return int(np.argmax(per_sample))


def check_image_rank(x: Any, name: str) -> None:
    """Images must be rows: ``[N, D]``, ``[N, H, W]`` or ``[N, C, H, W]`` (an array, or rows
    streamed from disk, which have a shape but no ``ndim``)."""
    if not 2 <= len(x.shape) <= 4:
        raise DataError(f"{name}: expected shape [N, D], [N, H, W] or [N, C, H, W], got {list(x.shape)}")


def check_images(x: np.ndarray, name: str) -> None:
    """Images must be a non-empty numeric array ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, D]``,
    finite, with values in [0, 1] or [0, 255]."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    check_image_rank(x, name)
    if len(x) == 0 or x[0].size == 0:
        raise DataError(f"{name}: the dataset is empty (shape {list(x.shape)})")
    # One pass over both problems, so the sample named is the first with either.
    non_finite = ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, bool)
    with np.errstate(invalid="ignore"):
        outside = (x < 0) | (x > 255)
    bad = non_finite | outside
    if bad.any():
        i = _first_bad_index(bad)
        if non_finite[i].any():
            raise DataError(f"{name}: sample {i} has non-finite pixel values (NaN or inf); "
                            f"expected finite values in [0, 1] or [0, 255]")
        values = x[i][outside[i]]
        raise DataError(f"{name}: sample {i} has values outside [0, 255] (from {float(values.min()):g} "
                        f"to {float(values.max()):g}); expected pixels in [0, 1] or [0, 255]")


def check_image_shape(shape: tuple[int, ...], expected: tuple[int, ...], name: str,
                      expected_from: str) -> None:
    """One image of ``name`` must have the shape ``expected`` that ``expected_from`` set."""
    if tuple(shape) != tuple(expected):
        raise DataError(f"{name}: images have shape {list(shape)}, but {expected_from} "
                        f"has images of shape {list(expected)}; expected the same image size")


def check_labels(y: np.ndarray, n: int, name: str) -> None:
    """Labels must be one integer per image: shape ``[n]``, whole numbers."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name}: expected {n} labels of shape [{n}] (one per image), "
                        f"got shape {list(y.shape)}")
    if len(y) != n:
        first = min(len(y), n)  # the first image without a label, or the first label without an image
        raise DataError(f"{name}: expected {n} labels (one per image), got {len(y)}; "
                        f"index {first} is the first where images and labels disagree")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return
    if not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    bad = ~np.isfinite(y) | (np.mod(np.nan_to_num(y), 1) != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{name}: label {i} is {float(y[i]):g}; expected integer class labels")


def check_label_range(y, classes: int, name: str) -> None:
    """Class labels ``y`` ``[N]`` must lie in 0..classes−1; the first that does not is named."""
    import torch

    bad = (y < 0) | (y >= classes)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise DataError(f"{name}: label {i} is {int(y[i])}; this story has {classes} classes, "
                        f"so labels must lie in 0..{classes - 1} (--model-arg classes=K)")


# Names that left this module in 0.2, kept for one release (pyro_vae/deprecated.py).
__getattr__ = forwarder(__name__, MOVED_NAMES[__name__])
