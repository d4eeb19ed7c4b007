"""explorer.html's numbers, checked against exact answers (the page in a browser:
test_browser.py): the embedded weights are the decoder's, the prior's contours of N(0, I)
are its circles, q sliced by a plane is the Gaussian the page draws, a grid holds the story's
own law at its nodes (other latents at their means), and what train and explore write or say."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch

from pyro_vae import prior_predictive
from pyro_vae.config import ModelConfig, RunConfig, StoryConfig, TrainConfig
from pyro_vae.explore import EXPLORER_FILE, Plane, write_explorer
from pyro_vae.explore.scene import gaussians_on_plane
from pyro_vae.runs import load_run

from support import page_array, page_spec, run_cli, train_tiny, untrained

STORIES = "examples/stories"


@pytest.fixture
def run(explore_run):
    """A 2-D digits VAE trained by the CLI (conftest.py): train wrote explorer.html at the end."""
    return explore_run


def test_train_writes_the_page_and_explore_rewrites_it_where_asked(run, tmp_path, capsys):
    assert (run / EXPLORER_FILE).stat().st_size > 10_000
    assert page_spec(run / EXPLORER_FILE)["decoder"]["mode"] == "mlp"
    code, err = run_cli(["explore", str(run), "--out", str(tmp_path / "e.html")], capsys)
    assert code == 0 and "the decoder runs in the page" in err
    spec = page_spec(tmp_path / "e.html")
    assert spec["site"] == "z" and spec["dim"] == 2 and "checkpoint last, epoch 15" in spec["caption"]
    code, err = run_cli(["explore", str(run), "--site", "w"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "pyro-vae explore: error: --site w: not a real-valued latent site of the story VAE; "
        "those are z"]


def test_the_embedded_weights_are_the_decoders_own(run):
    decoder = load_run(run).model.decoder.net
    linears = [m for m in decoder if isinstance(m, torch.nn.Linear)]
    layers = page_spec(run / EXPLORER_FILE)["decoder"]["layers"]
    assert len(layers) == len(linears)
    for layer, linear in zip(layers, linears):
        assert np.array_equal(page_array(layer["weight"]), linear.weight.detach().numpy())
        assert np.array_equal(page_array(layer["bias"]), linear.bias.detach().numpy())
    assert [la["act"] for la in layers] == ["relu"] * (len(layers) - 1) + [None]


def test_the_prior_contours_of_a_standard_normal_are_its_circles(run):
    """N(0, I) in 2-D: the region of highest density holding mass m is the disc of radius
    r = √(−2 ln(1 − m)), on whose edge the density is (1 − m)/(2π)."""
    prior = page_spec(run / EXPLORER_FILE)["prior"]
    assert prior["how"] == "exact" and [lv["mass"] for lv in prior["levels"]] == [0.5, 0.9, 0.99]
    for level in prior["levels"]:
        m = level["mass"]
        # The level is read off a 120 × 120 grid of densities: 2 % covers its cells' spacing.
        assert level["level"] == pytest.approx((1 - m) / (2 * math.pi), rel=0.02)
        points = np.concatenate([np.reshape(line, (-1, 2)) for line in level["lines"]])
        assert np.abs(np.hypot(*points.T) - math.sqrt(-2 * math.log(1 - m))).max() < 0.03


def test_q_sliced_by_the_plane_is_the_gaussian_drawn_on_it():
    """For z = c + A u, log q(z) − log N(u; u*, Σ_u) is the same at every u of the plane."""
    rng = np.random.default_rng(0)
    d = 5
    axes, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    plane = Plane(rng.normal(size=d), axes)
    loc = rng.normal(size=(1, d))
    root = rng.normal(size=(d, d))
    cov = root @ root.T + 0.1 * np.eye(d)
    mean, sigma = gaussians_on_plane(loc, cov[None], plane)
    u = rng.normal(size=(6, 2)) * 2
    z = plane.lift(u)
    log_q = torch.distributions.MultivariateNormal(torch.tensor(loc[0]), torch.tensor(cov)).log_prob(
        torch.tensor(z)).numpy()
    log_u = torch.distributions.MultivariateNormal(torch.tensor(mean[0]), torch.tensor(sigma[0])).log_prob(
        torch.tensor(u)).numpy()
    assert np.ptp(log_q - log_u) < 1e-9


@pytest.mark.parametrize("story", ["conv", "ink"])
def test_a_grid_holds_the_storys_own_law_at_its_nodes(story, tmp_path):
    """At every node the page's mean image is PyTorch's: the built-in VAE with a conv decoder,
    and the ink story with its other latent held at its mean (LogNormal(0, 0.5): e^(1/8))."""
    model_cfg = ModelConfig(latent_dim=2, hidden_sizes=(16,))
    if story == "conv":
        cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,), decoder="conv",
                                          options={"decoder": {"conv": {"channels": (4, 4),
                                                                        "hidden": 8}}}))
    else:
        cfg = RunConfig(model=model_cfg, story=StoryConfig(
            model=f"{STORIES}/ink.py:InkStory", args={"latent_dim": 2, "hidden": 16}))
    cfg = RunConfig(model=cfg.model, story=cfg.story, train=TrainConfig(device="cpu"))
    data, model, guide = untrained(cfg)
    page = write_explorer(model, guide, data, tmp_path / "p.html")
    spec = page_spec(page.path)
    n, law = spec["decoder"]["resolution"], spec["decoder"]["laws"][0]
    assert page.mode == "grid" and f"grid of {n} × {n} points" in " ".join(spec["notes"])
    x0, x1, y0, y1 = spec["window"]
    rows = np.array([0, n + 3, n * n - 1])
    u = np.stack([x0 + (rows % n) * (x1 - x0) / (n - 1), y0 + (rows // n) * (y1 - y0) / (n - 1)], 1)
    z = torch.tensor(u, dtype=torch.float32)  # a 2-D site: the plane is z-space itself
    fixed = {"z": z} | ({"ink": torch.full((3,), math.exp(0.125))} if story == "ink" else {})
    template = data.eval_split("test")[:1].expand(3, -1)
    mean, _ = prior_predictive(model, template, {"y": data.test.labels[:1].expand(3)}, fixed)
    logits = page_array(law["params"]["logits"]["data"])[rows]
    assert np.allclose(torch.sigmoid(torch.tensor(logits)).numpy(), mean.numpy(), atol=1e-6)
    if story == "ink":
        assert "Other latent sites (ink) are held at their mean" in " ".join(spec["notes"])


SIMPLEX = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    from torch import nn


    class Story(nn.Module):
        def __init__(self, data_dim):
            super().__init__()
            self.decoder = nn.Linear(3, data_dim)

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                w = pyro.sample("w", dist.Dirichlet(x.new_ones(3)))
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(w)).to_event(1), obs=x)
    ''')


def test_a_story_without_a_real_valued_latent_gets_one_line_instead(tmp_path, capsys):
    (tmp_path / "simplex.py").write_text(SIMPLEX)
    run = train_tiny(tmp_path, "w", "--epochs", "1", "--model", f"{tmp_path / 'simplex.py'}:Story")
    note = (f"no explorer: the story {tmp_path / 'simplex.py'}:Story has no real-valued latent "
            f"site to move through")
    assert f"note: {note}\n" in capsys.readouterr().err
    assert not (run / EXPLORER_FILE).exists()
    code, err = run_cli(["explore", str(run)], capsys)
    assert code == 2 and err.strip().splitlines() == [  # the story as the run folder keeps it
        f"pyro-vae explore: error: no explorer: the story {run / 'story.py'}:Story has no "
        f"real-valued latent site to move through"]
