"""The Bernoulli likelihood's own log-density (``BernoulliLogits``) against exact answers:
float64 over the whole range of logits, torch's Bernoulli, and a whole fit."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import logsigmoid

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.infer.loop import fit
from pyro_vae.models import likelihoods
from pyro_vae.models.likelihoods import BernoulliLogits
from pyro_vae.stories.build import build_vae

# Every float32 logit in [-100, 100] on a 1e-3 grid, and the extremes.
LOGITS = torch.cat([torch.linspace(-100, 100, 200_001),
                    torch.tensor([-3e38, -1e30, -1e4, 1e4, 1e30, 3e38])])


def _exact(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x·log σ(l) + (1 − x)·log σ(−l) in float64, from the same float32 inputs."""
    l, x = logits.double(), x.double()
    return x * logsigmoid(l) + (1 - x) * logsigmoid(-l)


@pytest.mark.parametrize("x", [0.0, 1.0, 0.3])
def test_log_density_and_gradient_are_within_1e6_of_float64(x):
    logits = LOGITS.clone().requires_grad_(True)
    value = torch.full_like(LOGITS, x)
    got = BernoulliLogits(logits=logits, validate_args=False).log_prob(value)
    exact64 = LOGITS.double().requires_grad_(True)
    exact = _exact(exact64, value)
    got.sum().backward()
    exact.sum().backward()
    if x in (0.0, 1.0):
        # A binary pixel's log-mass is ≤ 0 and, where it is far from 0, equals −|l| to the
        # last bit; float32 rounding of the cancellation near |l| ≈ 15 is ≤ 4.8e-7.
        assert (got.double() - exact).abs().max() <= 1e-6
    else:
        # For a grey x the value is ≈ −0.7·|l| at the extremes (≈ 2e38): the bound is then
        # float32's relative precision, and 1e-6 absolute on [-100, 100].
        inner = LOGITS.abs() <= 100
        assert (got.double() - exact)[inner].abs().max() <= 1e-6 * 100
        assert torch.isfinite(got).all()
    assert (logits.grad.double() - exact64.grad).abs().max() <= 1e-6


def test_equals_torchs_bernoulli_when_x_is_broadcast_over_draws():
    torch.manual_seed(0)
    logits = torch.randn(7, 5, 64) * 4  # [K, N, D]
    for x in (torch.bernoulli(torch.full((5, 64), 0.4)), torch.rand(5, 64)):  # binary, grey
        ours = BernoulliLogits(logits=logits, validate_args=False).log_prob(x)
        theirs = dist.Bernoulli(logits=logits, validate_args=False).log_prob(x)
        assert ours.shape == theirs.shape == (7, 5, 64)
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    # and the other way: one row of logits shared by a batch of values
    x = torch.bernoulli(torch.full((5, 64), 0.4))
    ours = BernoulliLogits(logits=logits[0, 0], validate_args=False).log_prob(x)
    assert torch.allclose(ours, dist.Bernoulli(logits=logits[0, 0]).log_prob(x), atol=1e-6, rtol=0)


def test_the_default_digits_run_ends_at_the_same_validation_elbo(monkeypatch):
    def run():
        data = load_data(DataConfig(name="digits"))
        model, guide = build_vae(ModelConfig(), data.data_dim, seed=0)
        return fit(model, guide, data, TrainConfig(epochs=5, device="cpu"),
                   progress=False).history[-1].val_elbo

    ours = run()
    monkeypatch.setattr(likelihoods, "BernoulliLogits", dist.Bernoulli)  # torch's own form
    theirs = run()
    # Same seed, same draws: the two forms differ by float32 rounding alone (≤ 5e-7 per
    # pixel), which 5 epochs of Adam carry to well under 1e-3 nats per image.
    assert abs(ours - theirs) < 1e-3
