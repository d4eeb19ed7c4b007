"""Likelihoods that fit the pixels: the discretized logistic of 8-bit images, the continuous
Bernoulli of grey levels, the Gaussian on dequantized pixels (its bits/dim a bound on the
8-bit log-probability), the checks of the data against them, and evaluate and diagnose
on each through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from pyro_vae.cli import main
from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.infer.loop import fit
from pyro_vae.models.likelihoods import BinNormal, DiscretizedLogistic
from pyro_vae.pixels import Pixels
from pyro_vae.stories.build import build_part, build_vae
from pyro_vae.validation import DataError

from support import load_benchmark

LEVELS = torch.arange(256, dtype=torch.float64) / 255
# (location, scale): inside and outside [0, 1], narrower than a bin and wider than the range
PARAMS = [(0.3, 0.05), (0.0, 0.002), (1.2, 0.3), (-0.4, 1e-3), (0.5, 3.0)]


def _probabilities(loc: float, scale: float) -> torch.Tensor:
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    return d.expand((256,)).log_prob(LEVELS).exp()


@pytest.mark.parametrize("loc,scale", PARAMS)
def test_discretized_logistic_is_the_logistic_read_off_in_256_bins(loc, scale):
    """P(k) is the logistic CDF across the bin, the edge bins take the tails, and the 256
    probabilities sum to 1 (float64: 1e-12 leaves room for rounding in 256 terms only)."""
    p = _probabilities(loc, scale)
    cdf = lambda v: torch.sigmoid((v - loc) / scale)  # noqa: E731
    half = 0.5 / 255
    expected = cdf(LEVELS + half) - cdf(LEVELS - half)
    expected[0], expected[-1] = cdf(LEVELS[0] + half), 1 - cdf(LEVELS[-1] - half)
    assert torch.allclose(p, expected, rtol=1e-9, atol=1e-15)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("loc,scale", PARAMS)
def test_mean_is_the_average_level(loc, scale):
    d = DiscretizedLogistic(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    assert float(d.mean) == pytest.approx(float((LEVELS * _probabilities(loc, scale)).sum()), abs=1e-12)


def test_draws_fall_in_each_level_as_often_as_its_probability():
    """20,000 draws: each level's frequency within 5 binomial standard errors of P(k)
    (a false alarm on any of the 256 levels has probability below 1e-4)."""
    torch.manual_seed(0)
    n, loc, scale = 20_000, 0.5, 0.01
    draws = DiscretizedLogistic(torch.tensor(loc), torch.tensor(scale)).sample((n,))
    k = (draws * 255).round().long()
    assert torch.allclose(draws.double(), k.double() / 255, atol=1e-6)
    freq = torch.bincount(k, minlength=256).double() / n
    p = _probabilities(loc, scale)
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all())


def test_scores_stay_finite_where_the_cdf_difference_underflows():
    """A pixel 100 scales from the location: σ(b⁺) − σ(b⁻) is 0 in float32, the log form is
    the logistic log-density times the bin width to within 1 %."""
    loc, scale, x = torch.tensor(0.0), torch.tensor(0.004), torch.tensor(0.4)
    lp = DiscretizedLogistic(loc, scale).log_prob(x)
    z = float((x - loc) / scale)
    density = -z - math.log(scale) - 2 * math.log1p(math.exp(-z))
    assert math.isfinite(float(lp)) and float(lp) == pytest.approx(density + math.log(1 / 255), rel=0.01)


def test_continuous_bernoulli_is_a_density_on_the_unit_interval():
    """∫₀¹ p(x) dx = 1 for each logit (trapezoid rule, 20,001 points: error below 1e-6 for
    these smooth densities, so 1e-4 is a safe tolerance)."""
    lik = build_part(ModelConfig(likelihood="continuous-bernoulli"), "likelihood", 4)
    x = torch.linspace(0, 1, 20_001, dtype=torch.float64)[:, None].expand(-1, 4)
    logits = torch.tensor([[-5.0, -0.3, 0.0, 2.0]], dtype=torch.float64)
    density = lik(logits).base_dist.log_prob(x).exp()
    assert torch.allclose(torch.trapezoid(density, x[:, 0], dim=0), torch.ones(4, dtype=torch.float64),
                          atol=1e-4)


LOGITS = [-6.0, -2.0, 0.5, 1.0, 3.0, 9.0]


@pytest.mark.parametrize("shown", ["reconstruction", "prior draw"])
def test_continuous_bernoulli_images_are_its_mean_not_lambda(shown):
    """What figures and ``pyro-vae sample`` show as the image is E[x] = λ/(2λ − 1) +
    1/(2 artanh(1 − 2λ)) (Loaiza-Ganem & Cunningham 2019), not λ = sigmoid(logit): the decoder
    is made to output fixed logits (last layer: zero weights, bias = the logits), whose means
    differ from λ by up to 0.22. float64 closed form; 1e-5 is float32 rounding."""
    from torch import nn

    from pyro_vae.predictive import prior_predictive, reconstruct

    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,),
                                         likelihood="continuous-bernoulli"), len(LOGITS), seed=0)
    last = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(LOGITS))
    x = torch.rand(3, len(LOGITS))
    image = (reconstruct(model, guide, x) if shown == "reconstruction"
             else prior_predictive(model, x)[0])
    lam = torch.sigmoid(torch.tensor(LOGITS, dtype=torch.float64))
    mean = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
    assert torch.allclose(image.double(), mean.expand(3, -1), atol=1e-5)
    assert float((mean - lam).abs().max()) > 0.2


def test_gaussian_default_keeps_its_plain_normal():
    """levels = 1 (the default) builds the Normal it always did: results stay bit for bit."""
    import pyro.distributions as dist

    lik = build_part(ModelConfig(likelihood="gaussian"), "likelihood", 5)
    assert type(lik(torch.zeros(2, 5)).base_dist) is dist.Normal


@pytest.mark.parametrize("sigma,k", [(0.02, 100), (0.02, 130), (0.3, 0), (0.3, 255), (0.004, 101)])
def test_dequantized_gaussian_bounds_the_probability_of_the_level(sigma, k):
    """With levels = 256, E_u log p((k + u)/256) ≤ log P(k), P(k) the Gaussian's mass on the
    bin [k/256, (k+1)/256) (Jensen); for σ much wider than a bin the gap is below 1e-4.
    E_u by the midpoint rule on 4,000 points (float64, error ≪ 1e-6)."""
    mu = torch.tensor(0.4, dtype=torch.float64)
    lik = build_part(ModelConfig(likelihood="gaussian-fixed",
                                 options={"likelihood": {"gaussian-fixed": {"sigma": sigma, "levels": 256}}}),
                     "likelihood", 1)
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    x = ((k + u) / 256)[:, None]
    bound = float(lik(mu.expand(4000, 1)).log_prob(x).mean())
    normal = Normal(mu, torch.tensor(sigma, dtype=torch.float64))
    log_mass = float((normal.cdf(torch.tensor((k + 1) / 256.0)) - normal.cdf(torch.tensor(k / 256.0))).log())
    assert bound <= log_mass + 1e-9
    if sigma > 0.1:
        assert bound == pytest.approx(log_mass, abs=1e-4)


def test_bin_normal_survives_expansion():
    """Under a particle plate the distribution is expanded; the log 256 must come along."""
    d = BinNormal(torch.zeros(3), torch.ones(3), math.log(256)).expand((4, 3))
    assert torch.allclose(d.log_prob(torch.zeros(4, 3)), Normal(0.0, 1.0).log_prob(torch.zeros(4, 3)) - math.log(256))


def test_dequantized_pixels_lie_in_their_own_bins():
    """(k + u)/256 with k = 255·x: training draws change, the evaluation draw is fixed by its seed."""
    x = torch.randint(0, 256, (60, 2, 3, 3), dtype=torch.uint8)
    data = from_tensor(x, cfg=DataConfig(name="t", binarize="dequantize"), binary_likelihood=False)
    k = (data.test.x * 255).round()
    ev = data.eval_split("test", seed=3)
    assert bool(((ev >= k / 256) & (ev < (k + 1) / 256)).all())
    assert torch.equal(ev, data.eval_split("test", seed=3))
    first, _ = data.train_batch(torch.arange(4))
    second, _ = data.train_batch(torch.arange(4))
    assert not torch.equal(first, second)


def test_eight_bit_floats_pass_and_other_floats_are_named():
    grid = torch.randint(0, 256, (30, 4)).float() / 255
    from_tensor(grid, cfg=DataConfig(name="t"), binary_likelihood=Pixels.EIGHT_BIT)
    off = grid.clone()
    off[7, 2] = 0.1234
    with pytest.raises(ValueError, match="sample 7 has pixel value 0.1234, which is not on the 8-bit grid"):
        from_tensor(off, cfg=DataConfig(name="t"), binary_likelihood=Pixels.EIGHT_BIT)


@pytest.mark.parametrize("extra,expected", [
    ([], "is not on the 8-bit grid k/255; the likelihood scores 8-bit pixels only"),
    (["--binarize", "dequantize"], "--binarize dequantize moves pixels off the 8-bit grid"),
])
def test_discretized_logistic_on_other_data_is_one_line_exit_2(tmp_path, capsys, extra, expected):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.random((50, 6, 6)).astype(np.float32))
    code = main(["train", "--data", str(tmp_path / "x.npz"), "--likelihood", "discretized-logistic",
                 *extra, "--epochs", "1", "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


SMALL = ["--encoder-conv-channels", "4,8", "--decoder-conv-channels", "8,4"]
CASES = {
    "bernoulli-conv": ["--encoder", "conv", "--decoder", "conv", *SMALL],
    "continuous-bernoulli-resnet": ["--likelihood", "continuous-bernoulli", "--encoder", "resnet",
                                    "--decoder", "resnet", "--encoder-resnet-channels", "4",
                                    "--decoder-resnet-channels", "4"],
    "discretized-logistic-conv": ["--likelihood", "discretized-logistic", "--encoder", "conv",
                                  "--decoder", "conv", *SMALL],
    "gaussian-dequantized": ["--likelihood", "gaussian-pixel", "--levels", "256", "--binarize",
                             "dequantize", "--encoder", "conv", *SMALL[:2]],
}
TINY_DIAGNOSE = ["--points", "2", "--chains", "1", "--warmup", "5", "--samples", "5",
                 "--local-steps", "5", "--elbo-samples", "8", "--no-progress"]


@pytest.fixture(scope="module")
def colour_file(tmp_path_factory):
    """300 random 8-bit colour images [3, 8, 8]: small enough for diagnose to be quick (the
    patches themselves are trained on in test_patches.py)."""
    path = tmp_path_factory.mktemp("colour") / "colour.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (300, 3, 8, 8), dtype=np.uint8))
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_train_evaluate_and_diagnose_work_unchanged(case, colour_file, tmp_path, capsys):
    """Each likelihood with a convolutional part: one epoch, then evaluate and diagnose.
    The 8-bit and dequantized likelihoods score log-probabilities (≤ 0 in expectation), so
    their bits/dim are positive, unlike a Gaussian density's on [0, 1]."""
    colour = "bernoulli" not in case
    data = colour_file if colour else "digits"
    assert main(["train", "--data", data, *CASES[case], "--latent-dim", "2", "--epochs", "1",
                 "--batch-size", "256", "--out", str(tmp_path), "--name", "r", "--no-progress"]) == 0
    run = tmp_path / "r"
    assert main(["evaluate", str(run), "--samples", "8", "--points", "4", "--no-progress"]) == 0
    iwae = json.loads((run / "evaluation.json").read_text())["estimates"]["iwae"]
    d = 3 * 8 * 8 if colour else 64
    assert iwae["bits_per_dim"] == pytest.approx(-iwae["mean"] / (d * math.log(2)))
    if colour:
        assert iwae["bits_per_dim"] > 0
    assert main(["diagnose", str(run), *TINY_DIAGNOSE]) == 0
    assert (run / "diagnostics.json").exists()


def test_fit_refuses_pixels_off_the_8bit_grid_for_an_8bit_likelihood():
    """The Python API checks what the CLI checks: a story that scores x on k/255 is refused
    off-grid data by fit, naming the sample, before any step."""
    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,),
                                         likelihood="discretized-logistic"), 16, seed=0)
    x = torch.randint(0, 256, (40, 4, 4)).float() / 255
    x[7, 1, 2] = 0.5  # not k/255
    data = from_tensor(x, binary_likelihood=False)
    with pytest.raises(DataError, match="pixel value 0.5, which is not on the 8-bit grid"):
        fit(model, guide, data, TrainConfig(epochs=1, device="cpu"), progress=False)


def _bernoulli_bias():
    """benchmarks/bernoulli_bias.py as a module."""
    return load_benchmark("bernoulli_bias")


def test_bernoulli_bias_exact_curves_match_the_integrals():
    """The figure's exact curves: the Bernoulli's total mass on [0, 1] is ∫₀¹ λ^x (1 − λ)^(1−x) dx
    (1/2 at λ = 1/2, never 1) and the CB's mean is ∫₀¹ x p(x) dx (trapezoid rule on 20,001
    points, float64: error far below the 1e-6 tolerance for these smooth integrands)."""
    bias = _bernoulli_bias()
    lam = torch.tensor([0.01, 0.3, 0.5, 0.8, 0.999], dtype=torch.float64)
    mass, mean = bias.exact_curves(lam)
    x = torch.linspace(0, 1, 20_001, dtype=torch.float64)[:, None]
    unnormalized = lam ** x * (1 - lam) ** (1 - x)
    assert torch.allclose(mass, torch.trapezoid(unnormalized, x[:, 0], dim=0), atol=1e-6)
    assert float(mass.max()) == pytest.approx(0.5)
    density = torch.distributions.ContinuousBernoulli(probs=lam).log_prob(x).exp()
    assert torch.allclose(mean, torch.trapezoid(x * density, x[:, 0], dim=0), atol=1e-6)


def test_bernoulli_bias_script_runs(tmp_path, capsys):
    """Two 2-epoch fits on digits (seconds), the table of three readings and the figure;
    a second call reads the cached readings back instead of fitting."""
    bias = _bernoulli_bias()
    args = ["--epochs", "2", "--points", "10", "--hidden", "16", "--out", str(tmp_path)]
    assert bias.main(args) == 0
    first = capsys.readouterr()
    assert first.out.count("| continuous Bernoulli") == 2 and "[bernoulli] 2 epochs" in first.err
    assert (tmp_path / "bernoulli_bias-digits-seed0.png").exists()
    assert bias.main(args) == 0
    second = capsys.readouterr()
    assert "epochs in" not in second.err and second.out.splitlines()[3:8] == first.out.splitlines()[3:8]
