"""The labelled stories (``--model label-prior``, ``--model cvae``) through the command line,
their own figures, bad labels refused before anything is written, and an exact log p(x | y).

Each story is trained once per module (tiny settings, digits); the tests then evaluate,
diagnose and sample the run folder it leaves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor

from pyro_vae.cli import main
from pyro_vae.evaluation.importance import evaluate
from pyro_vae.models.conditional import ConditionalVAE, LabelPrior, ellipse, project_regions
from pyro_vae.models.likelihoods import Gaussian
from pyro_vae.models.linear_gaussian import LinearDecoder

TINY_TRAIN = ["--epochs", "3", "--batch-size", "256", "--hidden", "32", "--no-progress",
              "--device", "cpu"]
TINY_EVALUATE = ["--samples", "50", "--points", "20", "--no-progress"]
TINY_DIAGNOSE = ["--points", "2", "--chains", "2", "--warmup", "15", "--samples", "15",
                 "--local-steps", "20", "--elbo-samples", "50", "--no-progress"]
STORY_FIGURE = {"label-prior": "label_prior_regions.png", "cvae": "style_transfer.png"}


@pytest.fixture(scope="module", params=sorted(STORY_FIGURE))
def trained(request, tmp_path_factory) -> tuple[str, Path]:
    """A shipped labelled story trained through the CLI on digits (once per module)."""
    out = tmp_path_factory.mktemp("conditional")
    assert main(["train", "--model", request.param, *TINY_TRAIN, "--out", str(out),
                 "--name", request.param]) == 0
    return request.param, out / request.param


def test_run_folder_has_the_story_figure(trained):
    story, run = trained
    for name in ("elbo_curves.png", "reconstructions.png", "latent_map.png", STORY_FIGURE[story]):
        assert (run / name).stat().st_size > 0, name


def test_evaluate_gives_finite_log_p_x_given_y(trained):
    _, run = trained
    assert main(["evaluate", str(run), *TINY_EVALUATE]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["num_points"] == 20
    for name in ("prior_mc", "elbo", "iwae"):
        assert math.isfinite(evaluation["estimates"][name]["mean"]), name


def test_diagnose_runs_on_a_labelled_story(trained):
    _, run = trained
    assert main(["diagnose", str(run), *TINY_DIAGNOSE]) == 0
    for name in ("diagnostics.json", "diagnostics.nc", "diagnostics.html"):
        assert (run / name).stat().st_size > 0, name


def test_sample_draws_a_chosen_label(trained, tmp_path):
    _, run = trained
    assert main(["sample", str(run), "--label", "3", "--n", "8", "--out", str(tmp_path / "3.png")]) == 0
    assert (tmp_path / "3.png").stat().st_size > 0


# ---------------------------------------------------------------- bad input

def _refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _images(n: int = 60, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 8, 8)) < 0.3).astype(np.uint8) * 255


@pytest.fixture
def out_of_range(tmp_path) -> Path:
    """An .npz of 60 labelled images whose row 37 has label 12 (classes are 0..9)."""
    y = np.arange(60) % 10
    y[37] = 12
    np.savez(tmp_path / "bad.npz", x=_images(), y=y)
    return tmp_path / "bad.npz"


def test_a_label_outside_the_classes_is_refused_before_anything_is_written(out_of_range, tmp_path,
                                                                           capsys):
    out = tmp_path / "runs"
    err = _refused(["train", "--model", "cvae", "--data", str(out_of_range), "--epochs", "1",
                    "--out", str(out), "--no-progress"], capsys)
    assert "bad.npz" in err and "is 12" in err and "0..9" in err, err
    assert " label " in err.split("is 12")[0], "the message names the offending label's index"
    assert not out.exists()


def test_a_label_outside_the_classes_is_named_by_its_row_in_the_file(out_of_range, tmp_path, capsys):
    err = _refused(["train", "--model", "cvae", "--data", str(out_of_range), "--epochs", "1",
                    "--out", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert "label 37 is 12" in err, err


def test_a_labelled_story_on_images_without_labels_is_refused(tmp_path, capsys):
    np.save(tmp_path / "images.npy", _images())
    out = tmp_path / "runs"
    err = _refused(["train", "--model", "label-prior", "--data", str(tmp_path / "images.npy"),
                    "--epochs", "1", "--out", str(out), "--no-progress"], capsys)
    assert "'y'" in err, err
    assert not out.exists()


def test_a_labelled_story_without_labels_is_told_where_labels_come_from(tmp_path, capsys):
    np.save(tmp_path / "images.npy", _images())
    err = _refused(["train", "--model", "label-prior", "--data", str(tmp_path / "images.npy"),
                    "--epochs", "1", "--out", str(tmp_path / "runs"), "--no-progress"], capsys)
    assert "labels arrive as y" in err, err


def test_sample_refuses_a_label_outside_the_classes(trained, tmp_path, capsys):
    _, run = trained
    err = _refused(["sample", str(run), "--label", "12", "--out", str(tmp_path / "s.png")], capsys)
    assert "--label 12" in err and "0..9" in err, err
    assert not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------- exact log p(x | y)

def _linear_label_prior(d: int = 3, D: int = 6, classes: int = 4, sigma: float = 0.5) -> LabelPrior:
    """A label prior with a linear decoder and fixed σ, its parameters drawn at random (float64)."""
    torch.manual_seed(0)
    story = LabelPrior(LinearDecoder(d, D), Gaussian(D, sigma, "fixed", 0.0), d, classes).double()
    with torch.no_grad():
        story.raw_scales.normal_(0.0, 0.7)
        story.decoder.linear.weight.normal_()
    return story


def _exact_posterior(story: LabelPrior, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """p(z | x, y) = N(m, C): C = (S⁻¹ + WᵀW/σ²)⁻¹, m = C (S⁻¹ μ_y + Wᵀ(x − b)/σ²), with
    S = diag σ_y²; ``m`` ``[N, d]``, ``C`` ``[N, d, d]``."""
    W, b = story.decoder.linear.weight, story.decoder.linear.bias
    s2, mu = story.scales()[y] ** 2, story.locs[y]
    noise = float(story.likelihood.sigma()) ** 2
    C = torch.linalg.inv(torch.diag_embed(1 / s2) + W.T @ W / noise)
    m = (C @ (mu / s2 + (x - b) @ W / noise).unsqueeze(-1)).squeeze(-1)
    return m, C


def _exact_log_p(story: LabelPrior, x: Tensor, y: Tensor) -> Tensor:
    """log N(x; W μ_y + b, W diag(σ_y²) Wᵀ + σ² I) per row: ``[N]``."""
    W, b = story.decoder.linear.weight, story.decoder.linear.bias
    noise = float(story.likelihood.sigma()) ** 2
    cov = W @ torch.diag_embed(story.scales()[y] ** 2) @ W.T + noise * torch.eye(len(b), dtype=b.dtype)
    return dist.MultivariateNormal(story.locs[y] @ W.T + b, covariance_matrix=cov).log_prob(x)


def _guide(story: LabelPrior, shift: float):
    """q(z | x, y): the exact posterior, its mean moved by ``shift`` in every coordinate."""

    def guide(x: Tensor, y: Tensor) -> None:
        m, C = _exact_posterior(story, x, y)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(m + shift, covariance_matrix=C))

    return guide


@torch.no_grad()
def test_iwae_with_the_exact_posterior_is_the_closed_form_log_p_x_given_y():
    story = _linear_label_prior()
    y = torch.arange(20) % 4
    x = dist.Normal(0.0, 2.0).sample((20, 6)).double()
    exact = _exact_log_p(story, x, y)
    # Every importance weight p(x, z | y) / q(z | x, y) equals p(x | y): no Monte Carlo error.
    ev = evaluate(story, _guide(story, 0.0), x, num_samples=16, batch={"y": y})
    assert torch.allclose(ev.iwae.per_point, exact, atol=1e-4, rtol=0)
    assert torch.allclose(ev.elbo.per_point, exact, atol=1e-4, rtol=0)
    wrong = evaluate(story, _guide(story, 1.0), x, num_samples=200, batch={"y": y})
    assert bool((wrong.elbo.per_point < exact - 1e-3).all())


# ---------------------------------------------------------------- the figures' helpers

def test_regions_are_projected_covariances_and_ellipses_their_axes():
    w, h, angle = ellipse(np.diag([4.0, 1.0]), 2.0)
    assert (w, h) == pytest.approx((8.0, 4.0)) and angle % 180 == pytest.approx(0.0, abs=1e-9)
    z = torch.randn(50, 3, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    r = project_regions(z, torch.zeros(50, dtype=torch.long), torch.zeros(1, 3), torch.ones(1, 3))
    # N(0, I) seen through orthonormal axes is N(·, I₂) in the plane.
    assert r.points.shape == (50, 2) and np.allclose(r.covs[0], np.eye(2))


@torch.no_grad()
def test_style_grid_decodes_one_z_under_every_label():
    from pyro_vae.models.likelihoods import Bernoulli

    story = ConditionalVAE(torch.nn.Linear(2 + 4, 6), Bernoulli(), 2, classes=4)
    z = torch.randn(3, 2)
    grid = story.style_grid(z)
    assert grid.shape == (3, 4, 6)
    for r in range(3):
        for k in range(4):
            assert torch.allclose(grid[r, k], story.x_dist(z[r:r + 1], torch.tensor([k])).mean[0])
