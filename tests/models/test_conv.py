"""Convolutional and residual encoders and decoders: shapes for any H, W, sizes the stack
cannot take, any encoder with any decoder, and train → evaluate → diagnose through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig
from pyro_vae.models.networks import halvings, image_chw
from pyro_vae.stories.build import build_part, build_vae

SHAPES = [(28, 28), (1, 28, 28), (3, 32, 32), (3, 64, 64), (2, 7, 9)]
PARTS = ["conv", "resnet"]


def small(part: str) -> ModelConfig:
    """Narrow widths and three halvings (the 64×64 images need no more to test the shapes)."""
    enc, dec = {"channels": [4, 6]}, {"channels": [6, 4]}
    return ModelConfig(latent_dim=3, encoder=part, decoder=part,
                       options={"encoder": {part: enc}, "decoder": {part: dec}})


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("part", PARTS)
def test_encoder_and_decoder_keep_rows_and_paint_the_exact_image(part, shape):
    """Rows [..., D] in, features [..., F] out; z [..., d] in, rows [..., D] out, for sides
    that halve unevenly (7 → 4 → 2, 9 → 5 → 3) as well as evenly."""
    cfg, d = small(part), int(np.prod(shape))
    encoder = build_part(cfg, "encoder", d, image_shape=shape)
    decoder = build_part(cfg, "decoder", d, image_shape=shape)
    assert encoder(torch.rand(2, 5, d)).shape == (2, 5, encoder.out_features)
    assert decoder(torch.randn(4, 5, 3)).shape == (4, 5, d)


def test_decoder_output_is_channel_major():
    """Row index c·H·W + h·W + w is channel c, pixel (h, w): a decoder whose last layer
    paints channel 1 alone puts all its output in the second third of the row."""
    cfg = small("conv")
    decoder = build_part(cfg, "decoder", 3 * 8 * 10, image_shape=(3, 8, 10))
    last = decoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    row = decoder(torch.randn(1, 3))[0]
    assert torch.equal(row.reshape(3, 8, 10)[1], torch.ones(8, 10))
    assert row.sum() == 80


def test_shape_comes_from_d_for_square_images_only():
    assert image_chw(None, 784, "x") == (1, 28, 28)
    assert image_chw(None, 3 * 32 * 32, "x") == (3, 32, 32)
    assert image_chw((5, 6), 30, "x") == (1, 5, 6)
    with pytest.raises(ValueError, match=r"conv encoder: images of shape \[10\] cannot be read"):
        image_chw(None, 10, "conv encoder")
    with pytest.raises(ValueError, match="cannot be halved 3 times .* at least 8"):
        halvings(7, 3, "conv encoder")
    assert halvings(7, 2, "x") == [7, 4, 2]


@pytest.mark.parametrize("encoder,decoder", [("conv", "mlp"), ("mlp", "resnet"), ("resnet", "conv")])
def test_any_encoder_with_any_decoder(encoder, decoder):
    """The decoder need not mirror the encoder: one ELBO step of each pairing is finite."""
    import pyro
    from pyro.infer import Trace_ELBO

    cfg = ModelConfig(latent_dim=2, hidden_sizes=(16,), encoder=encoder, decoder=decoder)
    model, guide = build_vae(cfg, 64, seed=0, image_shape=(8, 8))
    pyro.clear_param_store()
    loss = Trace_ELBO().differentiable_loss(model, guide, torch.rand(5, 64).round())
    loss.backward()
    assert torch.isfinite(loss)


def _npz(path, images: np.ndarray):
    np.savez(path, x=images)
    return str(path)


@pytest.mark.parametrize("images,expected", [
    (np.zeros((40, 3, 3), np.uint8), "an image side of 3 pixels cannot be halved 2 times"),
    (np.zeros((40, 10), np.uint8), "cannot be read as [C, H, W]"),
])
def test_an_image_size_the_stack_cannot_take_is_one_line_exit_2(tmp_path, capsys, images,
                                                                 expected):
    data = _npz(tmp_path / "x.npz", images)
    code = main(["train", "--data", data, "--encoder", "conv", "--decoder", "conv", "--epochs",
                 "1", "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_conv_flags_are_generated_and_recorded(tmp_path, capsys):
    """--encoder-conv-channels and --decoder-resnet-blocks come from the parts' options."""
    assert main(["train", "--data", "digits", "--encoder", "conv", "--decoder", "resnet",
                 "--encoder-conv-channels", "4,8", "--decoder-resnet-channels", "8",
                 "--decoder-resnet-blocks", "2", "--epochs", "1", "--batch-size", "512",
                 "--out", str(tmp_path), "--name", "r", "--no-progress"]) == 0
    model = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
    assert (model["encoder"], model["decoder"]) == ("conv", "resnet")
    assert model["options"]["encoder"] == {"conv": {"channels": [4, 8], "features": 256}}
    assert model["options"]["decoder"] == {"resnet": {"channels": [8], "blocks": 2}}


def test_a_non_square_image_trains_from_the_command_line(tmp_path):
    """The run's image shape reaches the built-in VAE's parts, so a 7 × 9 image (which no
    square reading of D = 63 fits) trains with conv parts, and a linear decoder still builds."""
    images = (np.random.default_rng(0).random((60, 7, 9)) > 0.5).astype(np.uint8) * 255
    data = _npz(tmp_path / "x.npz", images)
    for decoder in ("conv", "linear"):
        narrow = ["--decoder-conv-channels", "4"] if decoder == "conv" else []
        assert main(["train", "--data", data, "--encoder", "conv", "--decoder", decoder,
                     "--encoder-conv-channels", "4", *narrow, "--epochs", "1", "--out", str(tmp_path / "runs"), "--name", decoder,
                     "--no-progress"]) == 0
        shape = json.loads((tmp_path / "runs" / decoder / "config.json").read_text())["image_shape"]
        assert shape == [7, 9]
