"""PNG figures of a fit. Built on ``matplotlib.figure.Figure`` (no pyplot global state)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from pyro_vae.deprecated import MOVED_NAMES, forwarder
from pyro_vae.files import atomic_write
from pyro_vae.predictive import mean_latents, prior_predictive, reconstruct
from pyro_vae.programs import Batch
from pyro_vae.traces import index_rows, slice_rows


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically: a reader (a run being trained and
    evaluated at once) sees the old picture or the new one, never half of one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)


def as_images(x: Tensor, image_shape: Sequence[int]) -> np.ndarray:
    """``[N, D]`` pixels to ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (colour) for display."""
    x = x.detach().float().cpu().clamp(0, 1)
    shape = tuple(image_shape)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        shape = (side, side) if side * side == shape[0] else (1, shape[0])
    if len(shape) == 3:
        x = x.reshape(len(x), *shape)
        return (x[:, 0] if shape[0] == 1 else x.permute(0, 2, 3, 1)).numpy()
    return x.reshape(len(x), *shape).numpy()


GUTTER = (0.12, 0.47, 0.71)
"""RGB of the gutters between tiles: a blue that is no grey level, so neither white strokes
nor black background (nor a grey mean) run into it."""


def image_grid(images: np.ndarray, ncol: int) -> np.ndarray:
    """Tile ``[N, H, W(, 3)]`` into one RGB image ``[rows, columns, 3]``, ``ncol`` across,
    with 1-pixel :data:`GUTTER` gutters (grey tiles repeated into the three channels)."""
    n, h, w = images.shape[:3]
    nrow = math.ceil(n / ncol)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    grid = np.empty((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), dtype=np.float32)
    grid[:] = GUTTER
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = img
    return grid


def save_grid(x: Tensor, image_shape: Sequence[int], path: Path, ncol: int, title: str) -> Path:
    """Save images ``x`` ``[N, D]`` as one tiled grey (or colour) picture."""
    grid = image_grid(as_images(x, image_shape), ncol)
    fig = Figure(figsize=(max(4.0, ncol * 0.6), max(4.0, grid.shape[0] / grid.shape[1] * ncol * 0.6)))
    ax = fig.add_subplot()
    # RGB in [0, 1] is drawn as it is: each tile pixel is its value, no colormap in between.
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    save_figure(fig, path)
    return path


def elbo_curves(history: Sequence, path: Path) -> Path:
    """Train and validation ELBO (nats per image) against epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([r.epoch for r in history], [r.train_elbo for r in history], label="train ELBO")
    val = [(r.epoch, r.val_elbo) for r in history if r.val_elbo is not None]
    if val:
        ax.plot(*zip(*val), label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


@torch.no_grad()
def reconstructions(model: Callable, guide: Callable, x: Tensor, image_shape: Sequence[int],
                    path: Path, n: int = 16, batch: Batch | None = None) -> Path:
    """Each input (odd columns) beside the image site's mean with the latents at
    E_q[z | x] (even columns), for any story: guide, then the story conditioned."""
    x = x[:n]
    recon = reconstruct(model, guide, x, slice_rows(batch or {}, 0, n))
    pairs = torch.stack([x, recon.reshape(x.shape)], dim=1).reshape(2 * len(x), -1)
    return save_grid(pairs, image_shape, path, ncol=8, title="input | reconstruction (mean)")


@torch.no_grad()
def prior_samples(model: Callable, template: Tensor, image_shape: Sequence[int], path: Path,
                  n: int = 64, batch: Batch | None = None) -> Path:
    """The image site's mean for latents drawn from the story's prior; ``template``
    ``[≥1, D]`` gives the shape of one row (its values are not read), tiled to ``n`` rows."""
    rows = torch.arange(n, device=template.device) % len(template)
    mean, _ = prior_predictive(model, template[rows], index_rows(batch or {}, rows))
    return save_grid(mean.reshape(n, -1), image_shape, path, ncol=8,
                     title="image means for latents drawn from the prior")


def principal_plane(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``[d]`` and orthonormal axes ``[d, 2]`` of the plane to draw z ``[N, d]`` in:
    z's own axes for d ≤ 2 (the origin as centre), else its first two principal components."""
    d = z.shape[1]
    if d <= 2:
        return np.zeros(d), np.eye(d, 2)
    center = z.mean(0)
    # Rows of vt are the principal directions, by decreasing variance.
    _, _, vt = np.linalg.svd(z - center, full_matrices=False)
    return center, vt[:2].T


def project_2d(z: np.ndarray) -> np.ndarray:
    """z ``[N, d]`` to ``[N, 2]`` in its :func:`principal_plane`: itself when d ≤ 2 (padded
    with zeros for d = 1), else its first two principal components."""
    center, axes = principal_plane(z)
    return (z - center) @ axes


@torch.no_grad()
def latent_map(guide: Callable, x: Tensor, labels: Tensor | None, path: Path,
               site: str | None = None, batch: Batch | None = None) -> Path:
    """E_q[z_s | x] of ``x`` ``[N, D]`` for latent site ``site`` (default: the guide's first),
    coloured by label; sites above 2-D are shown by their first two principal components, a
    1-D site as a strip of its values per label (a histogram without labels)."""
    means = mean_latents(guide, x, batch)
    site = site or next(iter(means))
    if site not in means:
        raise ValueError(f"latent map: no latent site {site!r}; the guide has {list(means)}")
    z = means[site].reshape(len(x), -1).cpu().numpy()
    fig = latent_map_figure(z, None if labels is None else labels.cpu().numpy(), site)
    save_figure(fig, path)
    return path


def latent_map_figure(z: np.ndarray, labels: np.ndarray | None, site: str) -> Figure:
    """The latent map of :func:`latent_map` from the means ``z`` ``[N, d]``."""
    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    ax.set_title(f"latent map of site {site!r}, {len(z)} test images (d = {z.shape[1]})")
    if z.shape[1] == 1:  # one axis is all there is: no second one invented
        _strip(ax, z[:, 0], labels)
        ax.set_xlabel(f"E_q[{site} | x]")
        return fig
    points = project_2d(z)
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.8)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    axis = site if z.shape[1] <= 2 else f"PCA of E_q[{site} | x]"
    ax.set_xlabel(f"{axis} [0]")
    ax.set_ylabel(f"{axis} [1]")
    return fig


def _strip(ax, values: np.ndarray, labels: np.ndarray | None) -> None:
    """A 1-D site: a histogram of its values, or one row of points per label (jittered
    within the row only, so that the height carries no value of the site)."""
    if labels is None:
        ax.hist(values, bins=40)
        ax.set_ylabel("images")
        return
    kinds = np.unique(labels)
    row = np.searchsorted(kinds, labels)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(values))
    ax.scatter(values, row + jitter, c=labels, cmap="tab10", s=6, alpha=0.8)
    ax.set_yticks(range(len(kinds)), [str(k) for k in kinds])
    ax.set_ylabel("label")


def latent_grid(n: int, span: float = 0.95) -> Tensor:
    """An ``[n*n, 2]`` grid of z at normal quantiles (1 - span)/2 … (1 + span)/2 per axis."""
    q = torch.linspace((1 - span) / 2, (1 + span) / 2, n)
    axis = torch.distributions.Normal(0.0, 1.0).icdf(q)
    zy, zx = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    return torch.stack([zx, zy], dim=-1).reshape(-1, 2)


@torch.no_grad()
def manifold(model: Callable, site: str, template: Tensor, image_shape: Sequence[int], path: Path,
             n: int = 15, batch: Batch | None = None) -> Path:
    """For a story whose only latent is the 2-D real site ``site``: the image site's mean
    over a grid of its values (normal quantiles; rows: the second coordinate high to low)."""
    z = latent_grid(n).to(template.device)
    rows = torch.arange(n * n, device=template.device) % len(template)
    mean, _ = prior_predictive(model, template[rows], index_rows(batch or {}, rows), {site: z})
    return save_grid(mean.reshape(n * n, -1), image_shape, path, ncol=n,
                     title=f"image means over a grid of {site} (normal quantiles)")


# ---------------------------------------------------------------- evaluate's figures


# Names that left this module in 0.2, kept for one release (pyro_vae/deprecated.py).
__getattr__ = forwarder(__name__, MOVED_NAMES[__name__])
