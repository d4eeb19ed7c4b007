"""The two ways in: images named by a :class:`~pyro_vae.config.DataConfig` (held in memory or
streamed, :mod:`~pyro_vae.data.streams`) and images handed over as an array."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from pyro_vae.config import DataConfig
from pyro_vae.data.images import Data, RawImages, resolve_binarize, split_images
from pyro_vae.data.streams import load_images, split_or_stream


def load_data(cfg: DataConfig, binary_likelihood: bool = True) -> Data:
    """Load, check, scale and split the images that ``cfg`` names (the training images of a
    ``.npy`` file or image folder streamed when ``cfg.stream`` resolves to ``on``)."""
    binarize = resolve_binarize(cfg.binarize, binary_likelihood)
    return split_or_stream(load_images(cfg), cfg, binarize, binary_likelihood)


def from_tensor(x: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None,
                cfg: DataConfig = DataConfig(name="tensor"), binary_likelihood: bool = True) -> Data:
    """Python API: split images given as ``[N, *image_shape]`` (0–1 or 0–255)."""
    as_np = lambda a: a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)  # noqa: E731
    raw = RawImages(as_np(x), None if labels is None else as_np(labels), source="tensor")
    binarize = resolve_binarize(cfg.binarize, binary_likelihood)
    return split_images(raw, cfg, binarize, binary_likelihood)
