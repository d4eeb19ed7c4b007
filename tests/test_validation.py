"""Property-based checks (hypothesis) of data validation and config parsing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_vae.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
    run_config_from_dict,
    save_run_config,
)
from pyro_vae.data.loading import from_tensor
from pyro_vae.pixels import check_binary
from pyro_vae.validation import DataError, check_images, check_labels

FAST = settings(max_examples=60, deadline=None)
shapes = st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 5))


@st.composite
def images_with_bad_pixels(draw, bad_values, good_values=st.floats(0, 1, width=32)):
    """Valid images ``[N, H, W]`` (by default grey, in [0, 1]), then some pixels set to bad
    values; also the index of the first sample holding one."""
    shape = draw(shapes)
    x = draw(hnp.arrays(np.float32, shape, elements=good_values))
    flat = draw(st.sets(st.integers(0, x.size - 1), min_size=1, max_size=4))
    for k in flat:
        x.flat[k] = draw(bad_values)
    first_sample = min(flat) // (shape[1] * shape[2])
    return x, first_sample


@FAST
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64]), shapes,
                    elements=st.floats(0, 1, width=32)))
def test_valid_grey_images_pass(x):
    check_images(x, "x")


@FAST
@given(x=hnp.arrays(np.uint8, shapes))
def test_valid_byte_images_pass(x):
    check_images(x, "x")


@FAST
@given(case=images_with_bad_pixels(st.sampled_from([np.nan, np.inf, -np.inf])))
def test_non_finite_pixels_name_the_first_sample(case):
    x, first = case
    with pytest.raises(DataError, match=rf"^my file: sample {first} has non-finite pixel values"):
        check_images(x, "my file")


@FAST
@given(case=images_with_bad_pixels(st.one_of(st.floats(-1e6, -1e-3), st.floats(256, 1e6))))
def test_out_of_range_pixels_name_the_first_sample(case):
    x, first = case
    with pytest.raises(DataError, match=rf"sample {first} has values outside \[0, 255\]"):
        check_images(x, "x")


@FAST
@given(case=images_with_bad_pixels(st.sampled_from([np.nan, 300.0])))
def test_index_is_the_files_not_the_shuffled_splits(case):
    """The check runs before the split, so the index is the sample's place in the input."""
    x, first = case
    with pytest.raises(DataError, match=rf"sample {first} has"):
        from_tensor(torch.as_tensor(x), binary_likelihood=False)


@FAST
@given(shape=st.one_of(st.tuples(st.integers(0, 5)),
                       st.tuples(*[st.integers(1, 2)] * 5),
                       st.tuples(st.just(0), st.integers(1, 4)),
                       st.tuples(st.integers(1, 4), st.just(0))))
def test_bad_shapes_and_empty_sets(shape):
    with pytest.raises(DataError, match=r"expected shape|dataset is empty"):
        check_images(np.zeros(shape, np.float32), "x")


@FAST
@given(case=images_with_bad_pixels(st.sampled_from([0.5, 0.01, 0.99, 2.0, -1.0]),
                                   good_values=st.sampled_from([0.0, 1.0])))
def test_binary_check_names_the_first_non_binary_sample(case):
    x, first = case
    check_binary(torch.as_tensor(np.clip(np.round(x), 0, 1)), "x")  # 0/1 only: passes
    with pytest.raises(DataError, match=rf"^x: sample {first} has values other than 0 and 1"):
        check_binary(torch.as_tensor(x), "x")


@FAST
@given(n=st.integers(1, 50), m=st.integers(0, 60))
def test_labels_of_the_wrong_length(n, m):
    y = np.arange(m)
    if m == n:
        check_labels(y, n, "y")
        check_labels(y.astype(float), n, "y")  # whole numbers stored as floats are fine
        return
    with pytest.raises(DataError, match=rf"expected {n} labels \(one per image\), got {m}; "
                                        rf"index {min(n, m)} is the first"):
        check_labels(y, n, "y")


@FAST
@given(y=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-5, 5, allow_nan=False)))
def test_fractional_labels_are_named(y):
    fractional = np.mod(y, 1) != 0
    if not fractional.any():
        check_labels(y, len(y), "y")
        return
    with pytest.raises(DataError, match=rf"label {int(np.argmax(fractional))} is "):
        check_labels(y, len(y), "y")


names = st.text("abcdefghij-_", min_size=1, max_size=8)
model_configs = st.builds(
    ModelConfig, latent_dim=st.integers(1, 64), hidden_sizes=st.lists(st.integers(1, 512), max_size=3).map(tuple),
    activation=names, prior=names, likelihood=names,
    options=st.fixed_dictionaries({"prior": st.fixed_dictionaries({"mixture": st.fixed_dictionaries(
        {"components": st.integers(1, 50)})}), "likelihood": st.fixed_dictionaries(
        {"gaussian": st.fixed_dictionaries({"sigma": st.floats(1e-3, 10)})})}))
data_configs = st.builds(DataConfig, name=names, root=st.none() | names, download=st.booleans(),
                         binarize=st.sampled_from(["auto", "dynamic", "threshold", "none"]),
                         val_fraction=st.floats(0, 0.5), split_seed=st.integers(0, 2**31))
train_configs = st.builds(TrainConfig, epochs=st.integers(1, 10**4), lr=st.floats(1e-6, 1),
                          clip_norm=st.none() | st.floats(0.1, 100), seed=st.integers(0, 2**31),
                          early_stopping=st.none() | st.integers(1, 50), beta=st.floats(0.01, 10),
                          lr_schedule=names, init=names,
                          options=st.fixed_dictionaries({"lr_schedule": st.fixed_dictionaries(
                              {"step": st.fixed_dictionaries({"gamma": st.floats(0.01, 0.99)})})}),
                          adam_betas=st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)),
                          adam_eps=st.floats(1e-12, 1))
run_configs = st.builds(RunConfig, model=model_configs, data=data_configs, train=train_configs,
                        image_shape=st.lists(st.integers(1, 64), max_size=3).map(tuple))


@FAST
@given(cfg=run_configs)
def test_config_json_round_trip(cfg):
    assert run_config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_config_file_round_trip(tmp_path):
    cfg = RunConfig(model=ModelConfig(hidden_sizes=(7, 3)), image_shape=(8, 8))
    save_run_config(cfg, tmp_path / "config.json")
    assert load_run_config(tmp_path / "config.json") == cfg


@FAST
@given(cfg=run_configs, section=st.sampled_from([None, "model", "data", "train"]),
       key=st.text("xyz_", min_size=1, max_size=6))
def test_unknown_keys_are_refused_with_their_path(cfg, section, key):
    raw = dataclasses.asdict(cfg)
    where = raw if section is None else raw[section]
    where[key] = 1
    path = "config" if section is None else f"config.{section}"
    with pytest.raises(ValueError, match=rf"^{path}: unknown config keys \['{key}'\]"):
        run_config_from_dict(raw)


@FAST
@given(cfg=run_configs, data=st.data())
def test_values_of_the_wrong_type_are_refused_with_their_path(cfg, data):
    raw = dataclasses.asdict(cfg)
    section = data.draw(st.sampled_from(["model", "data", "train"]))
    key = data.draw(st.sampled_from(sorted(raw[section])))
    wrong = data.draw(st.sampled_from([[1.5], {"a": 1}, "text", [None]]))
    annotation = {f.name: str(f.type) for f in dataclasses.fields(getattr(cfg, section))}[key]
    if wrong == "text" and "str" in annotation:  # e.g. data.root: str | None takes any text
        wrong = 3
    raw[section][key] = wrong
    with pytest.raises(ValueError, match=rf"^config\.{section}\.{key}: expected "):
        run_config_from_dict(raw)


def test_section_that_is_not_an_object():
    with pytest.raises(ValueError, match=r"^config.train: expected a JSON object of TrainConfig"):
        run_config_from_dict({"train": [1, 2]})


def test_options_must_be_objects_three_levels_deep():
    """``model.options`` is kind → part → field: a number where a part's object belongs is
    refused by the field's path (a case the typed check above can draw only by chance)."""
    raw = dataclasses.asdict(RunConfig())
    raw["model"]["options"] = {"prior": 1}
    with pytest.raises(ValueError, match=r"^config\.model\.options: expected a JSON object of "
                                         r"JSON objects of JSON objects, got \{'prior': 1\}"):
        run_config_from_dict(raw)
