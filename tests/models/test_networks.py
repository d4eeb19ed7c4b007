"""models/networks.py: the gated layer is h(x) ⊙ sigmoid(g(x)) exactly, and the ``gated``
encoder and decoder are MLPs of such layers that the command line trains."""

from __future__ import annotations

import json

import torch
from torch import nn

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig
from pyro_vae.models import GatedLinear, joined, mlp
from pyro_vae.stories.build import build_part


def test_a_gated_layer_is_its_linear_part_times_the_sigmoid_of_its_gate():
    torch.manual_seed(0)
    layer = GatedLinear(5, 3)
    x = torch.randn(4, 5)
    w, b = layer.linear.weight, layer.linear.bias            # [6, 5]: h's rows, then g's
    by_hand = (x @ w[:3].T + b[:3]) * torch.sigmoid(x @ w[3:].T + b[3:])
    assert torch.allclose(layer(x), by_hand, atol=1e-6)


def test_a_gated_mlp_has_gates_for_nonlinearities_and_the_plain_one_keeps_its_activation():
    gated, plain = mlp(5, (8, 7), 2, "tanh", gated=True), mlp(5, (8, 7), 2, "tanh")
    assert [type(m) for m in gated] == [GatedLinear, GatedLinear, nn.Linear]
    assert [type(m) for m in plain] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert gated(torch.randn(3, 5)).shape == (3, 2)


def test_the_gated_parts_are_built_by_name_with_the_configured_sizes():
    cfg = ModelConfig(latent_dim=4, hidden_sizes=(9, 6), encoder="gated", decoder="gated")
    encoder, decoder = build_part(cfg, "encoder", 12), build_part(cfg, "decoder", 12)
    assert encoder.out_features == 6 and encoder(torch.rand(2, 12)).shape == (2, 6)
    assert decoder(torch.randn(2, 4)).shape == (2, 12)
    layers = [m for m in decoder.modules() if isinstance(m, GatedLinear)]
    assert [m.linear.out_features for m in layers] == [12, 18]    # 6 then 9, doubled by the gate


def test_a_vae_with_gated_nets_trains_from_the_command_line(tmp_path):
    assert main(["train", "--encoder", "gated", "--decoder", "gated", "--epochs", "1",
                 "--hidden", "16", "--out", str(tmp_path), "--name", "g", "--no-progress"]) == 0
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    assert config["model"]["encoder"] == config["model"]["decoder"] == "gated"


def test_joined_broadcasts_the_leading_dimensions_before_it_concatenates():
    rows, values = torch.randn(5, 3), torch.randn(4, 1, 2)   # [N, 3] and enumerated [K, 1, 2]
    both = joined(rows, values)
    assert both.shape == (4, 5, 5)
    assert torch.equal(both[2, 1, :3], rows[1]) and torch.equal(both[2, 1, 3:], values[2, 0])
