"""Initialization of the layers (pyro_vae/infer/inits.py): ``default`` is the fit as it was,
``normal`` draws every linear and convolution weight from N(0, std²) under the fit's seed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pyro_vae.cli import main
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.infer.inits import LAYERS, initialize
from pyro_vae.infer.session import start_session
from pyro_vae.runs.folders import resume_run, train_run
from pyro_vae.stories.build import build_vae

from support import reference_fit, same_result

MLP = ModelConfig(latent_dim=2, hidden_sizes=(32,), prior="mixture")
CONV = ModelConfig(latent_dim=2, hidden_sizes=(32,), encoder="conv", decoder="conv")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def _started(model_cfg: ModelConfig, data, **train) -> tuple[dict, dict]:
    """The parameters a fit starts from (after its initialization, before its first step),
    and those build_vae made under the same seed."""
    model, guide = build_vae(model_cfg, data.data_dim, seed=0)
    built = {k: v.detach().clone() for k, v in _named(model, guide).items()}
    cfg = TrainConfig(epochs=1, batch_size=256, device="cpu", seed=0, **train)
    session, _ = start_session(model, guide, data, cfg, None, None)
    started = _named(session.model.fn, session.guide.fn)
    return {k: v.detach().clone() for k, v in started.items()}, built


def _named(model: nn.Module, guide: nn.Module) -> dict[str, torch.Tensor]:
    return dict(nn.ModuleDict({"model": model, "guide": guide}).named_parameters())


def _layers(model_cfg: ModelConfig, data) -> dict[str, nn.Module]:
    """The linear and convolution layers of build_vae's model and guide, by name."""
    model, guide = build_vae(model_cfg, data.data_dim, seed=0)
    return {n: m for n, m in nn.ModuleDict({"model": model, "guide": guide}).named_modules()
            if isinstance(m, LAYERS)}


@pytest.mark.parametrize("model_cfg", [MLP, CONV], ids=["mlp", "conv"])
def test_default_starts_the_fit_from_build_vaes_parameters(digits, model_cfg):
    started, built = _started(model_cfg, digits)
    assert started.keys() == built.keys()
    assert all(torch.equal(started[k], built[k]) for k in built)


@pytest.mark.parametrize("model_cfg, kinds", [(MLP, {nn.Linear}),
                                              (CONV, {nn.Linear, nn.Conv2d, nn.ConvTranspose2d})],
                         ids=["mlp", "conv"])
def test_normal_draws_weights_from_n_0_std2_and_zeroes_biases(digits, model_cfg, kinds):
    std = 0.05
    started, built = _started(model_cfg, digits, init="normal",
                              options={"init": {"normal": {"std": std}}})
    layers = _layers(model_cfg, digits)
    assert {type(m) for m in layers.values()} == kinds
    for name in layers:
        assert not torch.equal(started[f"{name}.weight"], built[f"{name}.weight"]), name
        assert not started[f"{name}.bias"].any(), name
    # N weights: mean 0 and variance std², with standard errors std/√N and std²·√(2/N).
    weights = torch.cat([started[f"{name}.weight"].flatten() for name in layers])
    count = weights.numel()
    assert abs(float(weights.mean())) < 5 * std / math.sqrt(count)
    assert abs(float(weights.var()) - std ** 2) < 5 * std ** 2 * math.sqrt(2 / count)
    others = [k for k in built if k.rsplit(".", 1)[0] not in layers]
    assert others or model_cfg is CONV  # the mixture prior's means, scales and weights
    assert all(torch.equal(started[k], built[k]) for k in others)


def test_normal_is_the_same_under_a_seed_and_leaves_the_random_state_alone(digits):
    layers = list(_layers(MLP, digits).values())
    cfg = TrainConfig(init="normal", seed=3)
    before = torch.get_rng_state()
    initialize(cfg, nn.ModuleList(layers))
    assert torch.equal(torch.get_rng_state(), before)
    first = [m.weight.clone() for m in layers]
    initialize(cfg, nn.ModuleList(layers))
    assert all(torch.equal(a, m.weight) for a, m in zip(first, layers))
    initialize(TrainConfig(init="normal", seed=4), nn.ModuleList(layers))
    assert not any(torch.equal(a, m.weight) for a, m in zip(first, layers))


def test_a_resumed_fit_keeps_its_checkpointed_parameters(tmp_path):
    """Initialized once, at the start: stopped in epoch 2 and resumed, a normal-initialized
    fit is the uninterrupted one."""
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                    train=TrainConfig(epochs=3, batch_size=256, device="cpu", init="normal",
                                      options={"init": {"normal": {"std": 0.01}}}))
    reference = reference_fit(cfg)
    polls = iter(range(10 ** 6))
    assert train_run(cfg, tmp_path, "r", progress=False,
                     stop=lambda: next(polls) == 8).fit.interrupted
    resume_run(tmp_path / "r", progress=False)
    same_result(tmp_path / "r", reference)


def test_the_command_line_records_the_initialization(tmp_path):
    argv = ["train", "--epochs", "1", "--hidden", "8", "--batch-size", "256", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path), "--name", "r", "--init", "normal",
            "--init-normal-std", "0.02"]
    assert main(argv) == 0
    train = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert train["init"] == "normal" and train["options"]["init"] == {"normal": {"std": 0.02}}


@pytest.mark.parametrize("model_cfg", [MLP, CONV], ids=["mlp", "conv"])
def test_glorot_draws_each_layers_weights_uniformly_within_its_own_bound(digits, model_cfg):
    gain = 1.5
    started, built = _started(model_cfg, digits, init="glorot",
                              options={"init": {"glorot": {"gain": gain}}})
    for name in _layers(model_cfg, digits):
        weight = started[f"{name}.weight"]
        taps = math.prod(weight.shape[2:])
        bound = gain * math.sqrt(6 / (weight.shape[1] * taps + weight.shape[0] * taps))
        count = weight.numel()
        assert not started[f"{name}.bias"].any(), name
        assert float(weight.abs().max()) <= bound, name
        # U(−a, a) has variance a²/3, and its fourth moment a⁴/5 gives the sample
        # variance's standard error a²·√((1/5 − 1/9)/N); half its draws lie beyond a/2.
        tolerance = 5 * bound ** 2 * math.sqrt((1 / 5 - 1 / 9) / count)
        assert abs(float(weight.var()) - bound ** 2 / 3) < tolerance, name
        share_outer = float((weight.abs() > bound / 2).float().mean())  # 1/2 for U(−a, a)
        assert abs(share_outer - 0.5) < 5 * math.sqrt(0.25 / count), name
