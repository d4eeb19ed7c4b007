"""Streamed rows (pyro_vae/data/streams.py): a memory-mapped .npy file and a folder of images give
the rows that indexing the resident tensor gives, per-rank shares of each step partition the
global batch, a DataLoader with workers reads the same batches from any step, and reading
does not keep the file's pages in the process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data.streams import (
    FolderRows,
    NpyRows,
    StepBatches,
    batch_loader,
    open_rows,
    resident_bytes,
)
from pyro_vae.distributed import World
from pyro_vae.validation import DataError


@pytest.fixture
def images(tmp_path) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).integers(0, 256, size=(103, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy", x


def _resident(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float().div(255).reshape(len(x), -1)


def test_npy_rows_equal_resident_rows_in_any_order(images):
    path, x = images
    source = open_rows(path)
    index = np.array([7, 2, 102, 0, 2, 55])
    assert torch.equal(source.rows(index), _resident(x)[index])
    assert len(source) == 103 and source.image_shape == (6, 5)
    assert resident_bytes(source) == 103 * 30 * 4


def test_rank_shares_partition_each_step_and_the_loader_reads_them(images):
    """Two ranks' rows of step s, concatenated, are the one-process rows of step s; a loader
    with 2 worker processes from step 3 (a resumed epoch) gives the batches in order."""
    path, x = images
    perm = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    one = StepBatches(NpyRows(path), perm, 16)
    two = [StepBatches(NpyRows(path), perm, 16, World(r, 2)) for r in range(2)]
    assert len(one) == 7
    for step in range(len(one)):
        assert torch.equal(torch.cat([b[step] for b in two]), one[step])
        assert torch.equal(one[step], _resident(x)[perm[step * 16:(step + 1) * 16].numpy()])
    read = list(batch_loader(two[1], start=3, workers=2))
    assert len(read) == 4 and all(torch.equal(a, two[1][3 + i]) for i, a in enumerate(read))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io: moving to torchcodec
def test_folder_rows(tmp_path):
    from torchvision.io import write_png
    x = torch.randint(0, 256, (4, 1, 6, 5), dtype=torch.uint8)
    for i, image in enumerate(x):
        write_png(image, str(tmp_path / f"{i:03d}.png"))
    source = FolderRows(tmp_path)
    assert source.image_shape == (6, 5) and len(source) == 4
    assert torch.equal(source.rows(np.array([3, 1])), x[[3, 1]].float().div(255).reshape(2, -1))


def test_bad_sources_are_named(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(DataError, match=r"flat.npy holds an array of shape \[4\]"):
        NpyRows(tmp_path / "flat.npy")
    np.save(tmp_path / "words.npy", np.array([["a", "b"]] * 4))
    with pytest.raises(DataError, match=r"words.npy: expected a numeric array, got dtype <U1"):
        NpyRows(tmp_path / "words.npy")
    with pytest.raises(DataError, match="holds no image files"):
        FolderRows(tmp_path)
    bad = np.zeros((5, 2, 2))
    bad[3, 1, 0] = 300.0
    np.save(tmp_path / "big.npy", bad)
    with pytest.raises(DataError, match=r"big.npy \(rows from 0\): sample 3 has values outside "
                                        r"\[0, 255\]"):
        NpyRows(tmp_path / "big.npy").rows(np.array([0]))


@pytest.mark.parametrize("x", [np.array([[[0, 1]], [[1, 1]]], np.uint8),  # binary, not 1/255
                               np.array([[[0.0, 3.0]], [[255.0, 1.0]]]),  # 0–255 as floats
                               np.array([[[0.25, 1.0]], [[0.5, 0.0]]], np.float32)])
def test_npy_rows_scale_pixels_as_the_resident_path(tmp_path, x):
    """Divided by 255 when any pixel exceeds 1 (known after one scan of the file), as
    pyro_vae.data.split_images does with the same array in memory."""
    from pyro_vae.data.images import to_unit
    np.save(tmp_path / "x.npy", x)
    assert torch.equal(NpyRows(tmp_path / "x.npy").rows(np.array([1, 0])),
                       to_unit(x, "x")[[1, 0]])


def _resident_kb() -> int:
    """This process's resident memory now (anonymous and file-backed pages), in kB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssFile"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_reading_every_row_does_not_keep_the_file_resident(tmp_path):
    """A 64 MB file read whole, in random batches of 512: afterwards the process holds far
    less of it than its size (the map of each batch closes with the batch), here < 8 MB."""
    path = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(81_920, 28, 28))
    array[:] = 7
    array.flush()
    del array
    source = NpyRows(path)
    perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))
    before = _resident_kb()
    n = sum(len(b) for b in batch_loader(StepBatches(source, perm, 512), workers=0))
    assert n == 81_920
    assert _resident_kb() - before < 8 * 1024


def test_a_streamed_fit_is_the_resident_fit(tmp_path):
    """The built-in VAE fitted for 2 epochs (dynamic binarization, read-ahead workers) on a
    .npy file's training rows streamed, and on the same rows in memory: the same ELBOs and
    parameters, exactly (the draws are made on the fit's stream, after reading)."""
    from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
    from pyro_vae.data.images import Data, Split
    from pyro_vae.data.streams import streamed_data
    from pyro_vae.infer.loop import fit
    from pyro_vae.stories.build import build_vae

    x = np.random.default_rng(1).integers(0, 256, size=(700, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    streamed = streamed_data(tmp_path / "x.npy", DataConfig(), "dynamic", workers=2)
    rows = streamed.train.rows
    resident = Data(Split(_resident(x)[rows], None), streamed.val, streamed.test, (8, 8),
                    "dynamic")
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu")
    results = []
    for data in (streamed, resident):
        model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(16,)), 64, seed=0)
        results.append(fit(model, guide, data, cfg, progress=False))
    assert [r.history for r in results][0] != [] and \
        [(h.train_elbo, h.val_elbo) for h in results[0].history] == \
        [(h.train_elbo, h.val_elbo) for h in results[1].history]
    a, b = (torch.nn.ModuleDict({"m": r.model, "g": r.guide}).state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)
