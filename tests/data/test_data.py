"""Data loading: digits, user arrays, MNIST from ../shared/data, splits and binarization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vae.config import DataConfig
from pyro_vae.data.images import DATASETS, default_data_root
from pyro_vae.data.loading import from_tensor, load_data
from pyro_vae.validation import DataError


def test_digits_is_split_scaled_and_fixed():
    a = load_data(DataConfig(name="digits"))
    b = load_data(DataConfig(name="digits"))
    assert a.image_shape == (8, 8) and a.data_dim == 64
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert 0.0 <= float(a.train.x.min()) and float(a.train.x.max()) <= 1.0
    assert torch.equal(a.train.x, b.train.x), "the split must not depend on anything but split_seed"
    other = load_data(DataConfig(name="digits", split_seed=1))
    assert not torch.equal(a.train.x, other.train.x)


def test_binarization_modes():
    dynamic = load_data(DataConfig(name="digits", binarize="dynamic"))
    index = torch.arange(64)
    torch.manual_seed(0)
    first, fields = dynamic.train_batch(index)
    second, _ = dynamic.train_batch(index)
    assert set(fields) == {"y"} and torch.equal(fields["y"], dynamic.train.labels[index])
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second), "dynamic binarization draws afresh"
    assert torch.equal(dynamic.eval_split("val", seed=3), dynamic.eval_split("val", seed=3))
    threshold = load_data(DataConfig(name="digits", binarize="threshold"))
    assert set(threshold.train.x.unique().tolist()) <= {0.0, 1.0}
    grey = load_data(DataConfig(name="digits"), binary_likelihood=False)
    assert grey.binarize == "none" and len(grey.train.x.unique()) > 2


def test_user_npz_with_labels_and_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 5, 4), dtype=np.uint8)
    y = rng.integers(0, 3, size=50)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    data = load_data(DataConfig(name=str(tmp_path / "mine.npz")))
    assert data.image_shape == (5, 4)
    assert float(data.train.x.max()) <= 1.0
    assert data.train.labels is not None and len(data.train.labels) == len(data.train)


@pytest.mark.parametrize("arrays", [
    {"images": 0, "labels": 1},  # which is the images is a guess
    {"x_train": 0, "y_train": 1, "x_test": 0, "y_test": 1},
])
def test_npz_without_x_is_refused_naming_its_arrays_and_the_fix(tmp_path, arrays):
    """Without an ``x``, which array holds the images is a guess (it used to be ``images``,
    else ``x_train``, taken silently): refused, naming what the file holds and how to save it."""
    rng = np.random.default_rng(0)
    made = [rng.integers(0, 2, size=(20, 3, 3)).astype(np.float32), rng.integers(0, 3, size=20)]
    np.savez(tmp_path / "a.npz", **{k: made[v] for k, v in arrays.items()})
    with pytest.raises(DataError, match=rf"no array named 'x' among its {len(arrays)} arrays "
                                        rf"\({', '.join(sorted(arrays))}\).*np\.savez\(.*x="):
        load_data(DataConfig(name=str(tmp_path / "a.npz")))


def test_npz_with_one_array_takes_it_as_the_images(tmp_path):
    x = (np.random.default_rng(0).random((30, 3, 3)) > 0.5).astype(np.float32)
    np.savez(tmp_path / "one.npz", pixels=x)
    data = load_data(DataConfig(name=str(tmp_path / "one.npz"), binarize="none"))
    assert data.image_shape == (3, 3) and len(data.train) + len(data.val) + len(data.test) == 30


def test_tensor_api_keeps_unit_range_data():
    x = torch.rand(40, 3, 3)
    data = from_tensor(x, binary_likelihood=False)
    everything = torch.cat([data.train.x, data.val.x, data.test.x])
    assert torch.allclose(everything.sort(0).values, x.reshape(40, -1).sort(0).values)


def test_missing_torchvision_files_say_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"--download|--data-root") as err:
        load_data(DataConfig(name="mnist", root=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))
    assert default_data_root() == tmp_path


def test_registered_datasets():
    assert {"digits", "mnist", "fashion-mnist", "kmnist"} <= set(DATASETS)


def test_mnist_from_shared_data(mnist_root):
    data = load_data(DataConfig(name="mnist", root=str(mnist_root)))
    assert data.image_shape == (28, 28)
    assert len(data.test) == 10_000, "the official test split"
    assert len(data.train) + len(data.val) == 60_000
    assert data.binarize == "dynamic"


def test_bernoulli_draw_has_the_right_mean():
    """Mean of 20,000 draws per probability: standard error ≤ 0.0036, so 5 s.e. is 0.018."""
    from pyro_vae.data.images import bernoulli_draw

    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).expand(20_000, 5)
    draws = bernoulli_draw(p)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(draws.mean(0), p[0], atol=0.018)
    assert draws[:, 0].sum() == 0 and draws[:, 4].sum() == 20_000


def test_colour_images_stay_channels_first_through_data_and_figures():
    """[N, C, H, W] in: image_shape (C, H, W), rows channel-major, and the figures' images
    [N, H, W, C] with each channel where it was (a red image stays red)."""
    from pyro_vae.figures import as_images

    x = torch.zeros(30, 3, 4, 5)
    x[:, 0] = 1.0  # red
    data = from_tensor(x, binary_likelihood=False)
    assert data.image_shape == (3, 4, 5)
    assert torch.equal(data.train.x[0].reshape(3, 4, 5), x[0])
    shown = as_images(data.train.x[:2], data.image_shape)
    assert shown.shape == (2, 4, 5, 3)
    assert (shown[..., 0] == 1).all() and (shown[..., 1:] == 0).all()
