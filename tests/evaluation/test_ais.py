"""AIS and BDMC against exact answers: pPCA (closed-form log p(x)) and a two-component
mixture whose posterior is bimodal (closed-form log p(x), a unimodal guide visibly low).

Every tolerance is a multiple of a standard error measured in the same run (over images,
or over each image's chains), explained where used; seeds fix the draws.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.indexing import Vindex

from pyro_vae.evaluation.annealing import AISConfig, sigmoid_schedule
from pyro_vae.evaluation.bounds import ais, ais_curve, bdmc, check_ais
from pyro_vae.evaluation.importance import log_importance_weights
from pyro_vae.traces import log_mean_exp

from test_evaluate import draw, posterior_guide, ppca, user_ppca_model

N = 20
CURVE_N = 40
FAST = dict(leapfrog=2, warmup_steps=50)  # 2 leapfrog steps: the pPCA posterior is Gaussian and small


@pytest.fixture(scope="module")
def ppca_curve():
    """Guide-start AIS at T = 1, 10, 500 with 128 chains on 40 pPCA images, and the exact answer."""
    model, lg = ppca(2)
    x = draw(lg, CURVE_N)
    guide = posterior_guide(lg, shift=2.0, widen=3.0)  # a poor proposal: T matters
    curve = ais_curve(model, guide, x, AISConfig(chains=128, **FAST), (1, 10, 500), seed=0)
    return curve, lg.log_marginal(x).double()


def test_ais_at_500_steps_is_within_0_02_nats_of_the_exact_ppca_log_marginal(ppca_curve):
    curve, exact = ppca_curve
    err = curve[-1].estimate.per_point - exact
    # The error of the mean over 40 images has s.e. ≈ 0.005 here (each image's chain s.e.
    # ~0.032, /√40), and the log-mean bias −Var(w/p)/2C is ~5e-4: 0.02 is over 3 s.e.
    se = float(err.std() / math.sqrt(CURVE_N))
    assert se < 0.0067, se  # the test can tell 0.02 from 0
    assert abs(float(err.mean())) < 0.02, float(err.mean())
    # Each image's own error sits within 4 of its chain s.e. (plus the same small bias).
    assert bool((err.abs() < 4 * curve[-1].chain_stderr + 0.01).all())
    assert 0.4 < float(curve[-1].acceptance.mean()) < 0.9  # the warm-up found usable steps


def test_ais_rises_with_the_number_of_steps(ppca_curve):
    curve, exact = ppca_curve
    errs = [r.estimate.per_point - exact for r in curve]
    means = [float(e.mean()) for e in errs]

    def se(t: torch.Tensor) -> float:
        return float(t.std() / math.sqrt(CURVE_N))

    for a, b in zip(errs, errs[1:]):
        # Paired over the same images, each longer run may fall only by noise (2 s.e.).
        assert float((b - a).mean()) > -2 * se(b - a), means
    # Each is a lower bound in expectation: above the exact value only by noise (3 s.e.).
    assert all(float(e.mean()) < 3 * se(e) for e in errs), means
    # And the rise is real: T = 1 (importance sampling from the poor guide) lies below
    # T = 500 by more than 3 s.e. of the paired difference (~4 nats, s.e. ~1).
    assert float((errs[-1] - errs[0]).mean()) > 3 * se(errs[-1] - errs[0]), means


def test_bdmc_bounds_bracket_the_exact_value_and_the_gap_shrinks():
    model, lg = ppca(2)
    result = bdmc(model, posterior_guide(lg, shift=2.0, widen=3.0), draw(lg, N),
                  AISConfig(chains=16, **FAST), (2, 100), seed=2)
    exact = lg.log_marginal(result.data).double()
    assert result.data.shape == (N, 8)
    for lo, up in zip(result.lower, result.upper):
        # Stochastic bounds: lower ≤ exact ≤ upper in expectation, so each may cross only by
        # noise (3 s.e. of the paired difference over the simulated images).
        below, above = lo.estimate.per_point - exact, up.estimate.per_point - exact
        assert float(below.mean()) < 3 * float(below.std() / math.sqrt(N))
        assert float(above.mean()) > -3 * float(above.std() / math.sqrt(N))
    short, long = result.gap(0), result.gap(1)
    # The gap (≥ 0 in expectation) closes with T: at T = 2 it is over 3 s.e. (paired over the
    # images) above its value at T = 100, which is within noise (3 s.e.) of zero.
    shrink = short.per_point - long.per_point
    assert float(shrink.mean()) > 3 * float(shrink.std() / math.sqrt(N)), (short, long)
    assert abs(long.mean) < 3 * long.stderr + 0.01, long
    rows = result.summary()["per_steps"]
    assert [r["steps"] for r in rows] == [2, 100] and rows[-1]["gap_mean"] == long.mean


class BimodalMixture:
    """Each row: c ~ Categorical(π) (enumerated), z ~ N(μ_c, s²), x ~ N(z, σ²); so
    p(x) = Σ_c π_c N(x; μ_c, s² + σ²) and p(z | x) has one narrow mode per component."""

    def __init__(self) -> None:
        self.logits = torch.tensor([0.4, -0.4], dtype=torch.float64)
        self.mu = torch.tensor([-3.0, 3.0], dtype=torch.float64)
        self.s, self.sigma = 0.3, 2.0

    def __call__(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(Vindex(self.mu)[c], self.s))
            pyro.sample("x", dist.Normal(z, self.sigma), obs=x)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        per_c = dist.Normal(self.mu, math.sqrt(self.s ** 2 + self.sigma ** 2)).log_prob(x[:, None])
        return torch.logsumexp(per_c + torch.log_softmax(self.logits, 0), dim=-1)

    def mode_guide(self, x: torch.Tensor) -> None:
        """q(z | x): the exact posterior of the component at +3 alone (unimodal)."""
        v = 1 / (1 / self.s ** 2 + 1 / self.sigma ** 2)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(v * (self.mu[1] / self.s ** 2 + x / self.sigma ** 2),
                                         math.sqrt(v)))


def test_ais_from_the_prior_recovers_a_bimodal_marginal_where_a_unimodal_iwae_is_low():
    story = BimodalMixture()
    x = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    exact = story.log_marginal(x)
    pyro.set_rng_seed(0)
    iwae = log_mean_exp(log_importance_weights(story, story.mode_guide, x, 1000))
    # The guide misses the mode at −3 entirely: IWAE estimates log(p(x) · P(c = +3 | x)),
    # at least log(1/0.9) ≈ 0.1 nats low at every one of these points.
    assert bool((iwae < exact - 0.1).all()), (iwae - exact)
    result = ais(story, None, x, AISConfig(steps=200, chains=256, start="prior", leapfrog=3,
                                           warmup_steps=50), seed=0)
    err = result.estimate.per_point - exact
    # Both modes come from the prior (c summed inside the target, drawn in the start), so
    # AIS is unbiased per image: within 4 of its own chain s.e. (~0.03 with 256 chains; the
    # image at 2.0 has the largest, 0.073-0.084 over seeds 0-4 of the per-chunk seeding).
    assert bool((err.abs() < 4 * result.chain_stderr).all()), (err, result.chain_stderr)
    assert float(result.chain_stderr.max()) < 0.1


def test_constrained_latents_anneal_through_their_bijections():
    """z ~ Gamma(a, b), x ~ Poisson(z): p(x) is negative binomial in closed form. AIS runs
    on u = log z, so the Jacobian must enter f for the answer to come out right."""
    a, b = 3.0, 0.5

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(torch.tensor(a, dtype=x.dtype), b))
            pyro.sample("x", dist.Poisson(z), obs=x)

    x = torch.tensor([0.0, 3.0, 7.0, 12.0], dtype=torch.float64)
    exact = dist.NegativeBinomial(torch.tensor(a, dtype=x.dtype), probs=1 / (1 + b)).log_prob(x)
    result = ais(model, None, x, AISConfig(steps=100, chains=128, start="prior", leapfrog=3,
                                           warmup_steps=30), seed=0)
    err = result.estimate.per_point - exact
    assert bool((err.abs() < 4 * result.chain_stderr + 0.01).all()), (err, result.chain_stderr)


def test_a_latent_the_guide_leaves_out_starts_from_its_prior():
    """The pPCA story with a nuisance latent u the guide does not propose: u starts from its
    prior, which joins q in the start density, and AIS still finds log p(x)."""
    _, lg = ppca(2)
    x = draw(lg, 10)
    result = ais(user_ppca_model(lg, nuisance=True), posterior_guide(lg, shift=0.5, widen=1.5), x,
                 AISConfig(steps=50, chains=32, **FAST), seed=3)
    err = result.estimate.per_point - lg.log_marginal(x).double()
    assert bool((err.abs() < 4 * result.chain_stderr + 0.01).all()), (err, result.chain_stderr)


def test_schedule_and_bad_settings():
    beta = sigmoid_schedule(10)
    assert beta[0] == 0 and beta[-1] == 1 and bool((beta.diff() > 0).all())
    model, lg = ppca(2)
    x = draw(lg, 3)
    for bad, match in ((dict(steps=0), "steps"), (dict(chains=0), "chains"),
                       (dict(start="nowhere"), "AIS start")):
        with pytest.raises(ValueError, match=match):
            ais(model, None, x, AISConfig(**bad))
    with pytest.raises(ValueError, match="needs a guide"):
        ais(model, None, x, AISConfig(steps=2, chains=2))

    def global_latent(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(ValueError, match="'mu'.*global latents"):
        ais(global_latent, None, torch.zeros(4), AISConfig(steps=2, chains=2, start="prior"))

    def auxiliary_guide(x):  # q(z | x) only through an auxiliary site: no density at a moving z
        with pyro.plate("data", x.shape[0]):
            w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1),
                            infer={"is_auxiliary": True})
            pyro.sample("z", dist.Delta(w, event_dim=1))

    with pytest.raises(ValueError, match="'w' is not a continuous latent.*--ais-start prior"):
        check_ais(model, auxiliary_guide, x, AISConfig())
    check_ais(model, auxiliary_guide, x, AISConfig(start="prior"))  # the prior start needs no guide


def test_the_traced_target_gives_the_untraced_answer():
    """log f traced by torch.jit and run untraced: the same draws give the same weights (to
    float rounding), on a story with an enumerated site and one with a constrained site."""
    model, lg = ppca(2)
    x = draw(lg, 5)
    cfg = AISConfig(steps=5, chains=4, leapfrog=2, warmup_steps=3)
    traced = ais(model, posterior_guide(lg, shift=1.0), x, cfg, seed=4)
    untraced = ais(model, posterior_guide(lg, shift=1.0), x, dataclasses.replace(cfg, jit=False),
                   seed=4)
    for field in ("per_point", "chain_stderr"):  # the chains' weights, reduced
        torch.testing.assert_close(_reduced(traced, field), _reduced(untraced, field), rtol=1e-4,
                                   atol=1e-4)
    story = BimodalMixture()
    y = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    cfg = AISConfig(steps=5, chains=4, leapfrog=2, warmup_steps=3, start="prior")
    a = ais(story, None, y, cfg, seed=5)
    b = ais(story, None, y, dataclasses.replace(cfg, jit=False), seed=5)
    for field in ("per_point", "chain_stderr"):
        torch.testing.assert_close(_reduced(a, field), _reduced(b, field))


def _reduced(result, field: str) -> torch.Tensor:
    """Per image log p̂ or its chain s.e.: what AIS keeps of its chains' weights."""
    return result.estimate.per_point if field == "per_point" else result.chain_stderr
