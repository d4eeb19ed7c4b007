"""The image grids: what a PNG shows is the numbers it is labelled with.

A grid figure is read back from its PNG and sampled at the centre of every grid cell; the
cells are located from the picture itself (the longest run of rows and columns that are not
the white page), so a test checks the pixels, not the code that placed them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from pyro import poutine
from torch import nn

from pyro_vae import figures
from pyro_vae.config import ModelConfig
from pyro_vae.predictive import mean_latents
from pyro_vae.stories.build import build_vae

SHAPE = (8, 8)
EIGHT_BIT = 1 / 255 + 1e-6
"""A PNG stores 8 bits per channel: a pixel may differ from its float value by one level."""


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """``[start, stop)`` of the longest run of True in a 1-D boolean array."""
    best, start = (0, 0), None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            best = max(best, (start, i), key=lambda run: run[1] - run[0])
            start = None
    return best


def grid_cells(path: Path, grid_shape: tuple[int, int]) -> np.ndarray:
    """The PNG at ``path`` sampled at the centre of each cell of a grid of ``grid_shape``
    (rows, columns) pixels: ``[rows, columns, 3]`` in [0, 1]. The grid is the largest block
    of the picture that is not the white page (the title sits apart above it)."""
    png = imread(path)[..., :3].astype(np.float64)
    inked = (png < 0.999).any(-1)
    r0, r1 = _longest_run(inked.any(1))
    c0, c1 = _longest_run(inked[r0:r1].any(0))
    rows = r0 + ((np.arange(grid_shape[0]) + 0.5) * (r1 - r0) / grid_shape[0]).astype(int)
    cols = c0 + ((np.arange(grid_shape[1]) + 0.5) * (c1 - c0) / grid_shape[1]).astype(int)
    return png[np.ix_(rows, cols)]


def tiles_and_gutters(path: Path, n: int, ncol: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` tiles ``[n, 8, 8, 3]`` of an 8×8 grid figure and its gutter cells ``[G, 3]``."""
    h, w = SHAPE
    nrow = -(-n // ncol)
    cells = grid_cells(path, (nrow * (h + 1) + 1, ncol * (w + 1) + 1))
    tiles = np.stack([cells[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w]
                      for r, c in (divmod(i, ncol) for i in range(n))])
    gutter = ((np.arange(cells.shape[0]) % (h + 1) == 0)[:, None]
              | (np.arange(cells.shape[1]) % (w + 1) == 0)[None, :])
    return tiles, cells[gutter]


@pytest.fixture
def grey_vae():
    """A Bernoulli VAE on 8×8 images whose decoder means are mostly grey: the last layer of
    the untrained decoder is scaled up so that its means spread over (0, 1)."""
    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(16,)), 64, seed=0)
    last = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(6.0)
        last.bias.copy_(torch.linspace(-2.5, 2.5, 64))
    return model, guide


def _check(path: Path, expected: torch.Tensor, ncol: int) -> None:
    """The PNG's tiles equal ``expected`` ``[N, 64]`` (grey: all three channels) to 8-bit
    rounding, ``expected`` is mostly grey (else the check could not tell a threshold), and
    every gutter cell is far from both black and white."""
    expected = expected.reshape(-1, *SHAPE).double().numpy()
    assert ((expected > 0.1) & (expected < 0.9)).mean() > 0.5
    tiles, gutter = tiles_and_gutters(path, len(expected), ncol)
    assert np.abs(tiles - expected[..., None]).max() <= EIGHT_BIT
    # 0.25 of the unit cube's per-channel distance: a gutter no stroke or background merges into.
    assert np.abs(gutter - 0.0).max(-1).min() > 0.25
    assert np.abs(gutter - 1.0).max(-1).min() > 0.25


@torch.no_grad()
def test_prior_samples_png_shows_the_decoders_grey_means(grey_vae, tmp_path):
    model, _ = grey_vae
    template = torch.zeros(64, 64)
    torch.manual_seed(1)
    path = figures.prior_samples(model, template, SHAPE, tmp_path / "prior.png", n=16)
    torch.manual_seed(1)  # the same latents as the figure drew
    z = poutine.trace(poutine.uncondition(model)).get_trace(template[:16]).nodes["z"]["value"]
    _check(path, model.x_dist(z).mean, ncol=8)


@torch.no_grad()
def test_reconstructions_png_shows_inputs_and_grey_means(grey_vae, tmp_path):
    model, guide = grey_vae
    x = (torch.rand(8, 64, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    path = figures.reconstructions(model, guide, x, SHAPE, tmp_path / "recon.png", n=8)
    recon = model.x_dist(mean_latents(guide, x)["z"]).mean.reshape(-1, *SHAPE).double().numpy()
    assert ((recon > 0.1) & (recon < 0.9)).mean() > 0.5
    tiles, _ = tiles_and_gutters(path, 16, 8)  # input, reconstruction, input, ...
    assert np.abs(tiles[0::2] - x.reshape(-1, *SHAPE).numpy()[..., None]).max() <= EIGHT_BIT
    assert np.abs(tiles[1::2] - recon[..., None]).max() <= EIGHT_BIT


@torch.no_grad()
def test_manifold_png_shows_grey_means_over_the_grid(grey_vae, tmp_path):
    model, _ = grey_vae
    n = 5
    path = figures.manifold(model, "z", torch.zeros(4, 64), SHAPE, tmp_path / "manifold.png", n=n)
    _check(path, model.x_dist(figures.latent_grid(n)).mean, ncol=n)


def test_save_grid_gutters_stand_apart_from_black_and_white(tmp_path):
    """Strokes of 1 and background of 0 both border a gutter somewhere: it must be neither."""
    x = torch.tensor([0.0, 1.0]).repeat_interleave(32).reshape(1, 64).expand(4, -1)
    x = torch.cat([x, 1 - x]).contiguous()
    path = figures.save_grid(x, SHAPE, tmp_path / "grid.png", ncol=4, title="black and white")
    tiles, gutter = tiles_and_gutters(path, 8, 4)
    assert np.abs(tiles - x.reshape(-1, *SHAPE).numpy()[..., None]).max() <= EIGHT_BIT
    assert np.abs(gutter - 0.0).max(-1).min() > 0.25
    assert np.abs(gutter - 1.0).max(-1).min() > 0.25


def test_pyro_vae_sample_png_shows_the_decoders_mean(tmp_path):
    """``pyro-vae sample RUN --z … --mean`` draws f(z) as it is, grey levels included."""
    from pyro_vae.cli import main
    from pyro_vae.runs.folders import load_run

    assert main(["train", "--epochs", "2", "--hidden", "16", "--batch-size", "256", "--no-progress",
                 "--device", "cpu", "--out", str(tmp_path), "--name", "tiny"]) == 0
    out = tmp_path / "sample.png"
    assert main(["sample", str(tmp_path / "tiny"), "--z", "0.3,-0.8", "--mean", "--out", str(out)]) == 0
    model = load_run(tmp_path / "tiny", "cpu").model
    with torch.no_grad():
        _check(out, model.x_dist(torch.tensor([[0.3, -0.8]])).mean, ncol=2)


def test_a_one_dimensional_site_is_a_strip_per_label_not_an_invented_second_axis():
    z = np.linspace(-2, 2, 30)[:, None]
    labels = np.repeat([3, 5, 7], 10)
    ax = figures.latent_map_figure(z, labels, "c").axes[0]
    x, y = ax.collections[0].get_offsets().T
    assert np.allclose(x, z[:, 0])  # the site's value is the x axis, unprojected
    assert np.allclose(np.round(y), np.repeat([0, 1, 2], 10)) and ax.get_ylabel() == "label"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3", "5", "7"]
    ax = figures.latent_map_figure(z, None, "c").axes[0]
    assert not ax.collections and ax.get_ylabel() == "images"  # a histogram
    assert len(ax.patches) == 40
