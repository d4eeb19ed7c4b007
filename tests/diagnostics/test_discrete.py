"""q(c | x) of discrete latent sites against exact answers: Bayes' rule where the story sums
c out, the guide's own table where the guide samples c."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.diagnostics.discrete import DiscreteSite, discrete_posteriors, discrete_sites
from pyro_vae.diagnostics.report import discrete_figure

PI = torch.tensor([0.2, 0.5, 0.3])
MU = torch.tensor([-2.0, 0.0, 3.0])


def mixture(x: torch.Tensor) -> None:
    """c ~ Cat(π); z ~ N(0, 1); x ~ N(μ_c + z, 1)."""
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(MU[c] + z, 1.0), obs=x.squeeze(-1))


def z_at_zero(x: torch.Tensor) -> None:
    """q(z | x) = δ(z − 0.4): one point, so E_q p(c | x, z) = p(c | x, z = 0.4) exactly."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Delta(torch.full((x.shape[0],), 0.4)))


def test_a_summed_out_site_gets_bayes_rule_given_the_guides_z():
    x = torch.linspace(-4, 5, 7).unsqueeze(-1)
    assert discrete_sites(mixture, z_at_zero, x, {}) == {"c": "story"}
    [site] = discrete_posteriors(mixture, z_at_zero, x, {}, draws=2)
    joint = PI.log() + dist.Normal(MU + 0.4, 1.0).log_prob(x)  # [N, K]
    assert site.source == "story" and site.probs.shape == (7, 3)
    assert torch.allclose(site.probs, joint.softmax(-1), atol=1e-6)


def test_a_site_the_guide_samples_is_the_guides_table():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(probs[:x.shape[0]]))
            pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.zeros(3, 1)
    [site] = discrete_posteriors(mixture, guide, x, {}, draws=1, labels=torch.tensor([0, 2, 2]))
    assert site.source == "guide" and torch.allclose(site.probs, probs, atol=1e-6)
    assert site.share().tolist() == [1 / 3, 1 / 3, 1 / 3]
    assert site.by_label().tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert math.isclose(site.entropy(), float(entropy), rel_tol=1e-6)
    assert site.summary()["max_entropy"] == math.log(3)


def test_a_story_without_a_discrete_site_has_none():
    def gaussian(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x.squeeze(-1))

    assert discrete_posteriors(gaussian, z_at_zero, torch.zeros(4, 1), {}, draws=1) == []


def test_the_figure_shows_each_value_with_a_blank_row_for_an_unused_one(tmp_path):
    probs = torch.tensor([[0.9, 0.1, 0.0]] * 5 + [[0.2, 0.8, 0.0]] * 3)
    site = DiscreteSite("c", "story", probs, torch.rand(8, 16), torch.arange(8) % 2)
    assert site.examples(0).tolist() == [0, 1, 2, 3, 4] and site.examples(2).numel() == 0
    assert discrete_figure(site, (4, 4), tmp_path / "c.png").stat().st_size > 0
