"""Colour data: the offline ``patches`` set, the torchvision colour sets (skipped cleanly
without their files), and the README's colour run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.config import DataConfig
from pyro_vae.data.images import DATASETS, PATCH_SIDE, PATCH_TEST, PATCH_TRAIN
from pyro_vae.data.loading import load_data
from pyro_vae.validation import DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def raw():
    return DATASETS.lookup("patches")(DataConfig(name="patches"))


def test_patches_are_8bit_colour_images_channels_first(raw):
    assert raw.train_x.shape == (PATCH_TRAIN, 3, PATCH_SIDE, PATCH_SIDE)
    assert raw.test_x.shape == (PATCH_TEST, 3, PATCH_SIDE, PATCH_SIDE)
    assert raw.train_x.dtype == np.uint8 and raw.train_y is None


def test_patches_are_the_same_every_time(raw):
    again = DATASETS.lookup("patches")(DataConfig(name="patches"))
    assert np.array_equal(raw.train_x, again.train_x) and np.array_equal(raw.test_x, again.test_x)


def test_test_patches_come_from_a_region_no_training_patch_touches(raw):
    """Cut from the photographs' right-hand fifth: no test patch equals a training patch."""
    train = {p.tobytes() for p in raw.train_x}
    assert not any(p.tobytes() in train for p in raw.test_x)


def test_the_channels_are_the_photographs_own(raw):
    """The channel axis really is colour: sky and foliage make the channel means differ,
    while a transposed spatial axis would mix rows of one channel."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    means = np.concatenate([p.reshape(-1, 3) for p in photos]).mean(0)
    ours = raw.train_x.transpose(1, 0, 2, 3).reshape(3, -1).mean(1)
    assert np.argsort(ours).tolist() == np.argsort(means).tolist()


@pytest.mark.parametrize("name", ["cifar10", "svhn", "celeba"])
def test_colour_sets_without_their_files_say_where_and_how(name, tmp_path):
    with pytest.raises(DataError, match="--download") as err:
        load_data(DataConfig(name=name, root=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_registered_colour_sets():
    assert {"patches", "cifar10", "svhn", "celeba"} <= set(DATASETS)


def test_cifar10_from_shared_data_when_present():
    if not (SHARED / "cifar-10-batches-py").exists():
        pytest.skip("CIFAR-10 not found at ../shared/data")
    data = load_data(DataConfig(name="cifar10", root=str(SHARED)), binary_likelihood=False)
    assert data.image_shape == (3, 32, 32) and len(data.test) == 10_000


def test_readme_colour_run_draws_colour_figures(tmp_path, capsys):
    """pyro-vae train --data patches --likelihood discretized-logistic --encoder conv
    --decoder conv (narrow, one epoch): figures are RGB pictures."""
    from matplotlib.image import imread

    from pyro_vae.figures import GUTTER

    assert main(["train", "--data", "patches", "--likelihood", "discretized-logistic",
                 "--encoder", "conv", "--decoder", "conv", "--encoder-conv-channels", "4,8",
                 "--decoder-conv-channels", "8,4", "--latent-dim", "4", "--epochs", "1",
                 "--batch-size", "512", "--out", str(tmp_path), "--name", "r",
                 "--no-progress"]) == 0
    run = tmp_path / "r"
    assert json.loads((run / "config.json").read_text())["image_shape"] == [3, 32, 32]
    picture = imread(run / "reconstructions.png")[..., :3]
    # The gutters between tiles are coloured on purpose: only the other pixels count.
    shown = picture[np.abs(picture - np.asarray(GUTTER)).max(-1) > 2 / 255]
    assert np.abs(shown[..., 0] - shown[..., 2]).max() > 0.1, "not grey"
