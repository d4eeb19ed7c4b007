"""Objectives against exact answers: IWAE on a conjugate model, the mean-field KL, β and
KL warm-up as LatentScale applied from outside the story, and the JIT variants against the untraced losses."""

from __future__ import annotations

import math
import shutil
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.infer.loop import fit, kl_weight
from pyro_vae.infer.objectives import build_objective
from pyro_vae.jit import JitFallbackWarning
from pyro_vae.programs import unique_parameters
from pyro_vae.stories.build import build_vae, with_options


def _vae(prior: str = "normal", guide: str = "diagonal", latent_dim: int = 2):
    cfg = with_options(ModelConfig(latent_dim=latent_dim, hidden_sizes=(8,), activation="tanh",
                                   prior=prior, guide=guide), components=3, flow_layers=1)
    return build_vae(cfg, data_dim=6, seed=0)


def _x(n: int = 5) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 6), 0.4))


def conjugate_model(x):
    """z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(0, 2) and p(z | x) = N(x/2, 1/2)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def exact_posterior(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))


@pytest.mark.parametrize("objective", ["elbo", "iwae", "iwae-jit"])
def test_exact_posterior_gives_exact_log_evidence(objective):
    """With q = p(z | x) every importance weight equals p(x), so each bound is exact
    for every draw. (Not so for meanfield: its likelihood term alone is sampled.)"""
    x = torch.tensor([0.3, -1.2, 2.0])
    loss = build_objective(TrainConfig(objective=objective, particles=4)).differentiable_loss(
        conjugate_model, exact_posterior, x)
    expected = -dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).sum()
    assert torch.allclose(loss, expected, atol=1e-5)


def _guide_draw(guide, x, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return poutine.trace(guide).get_trace(x).nodes["z"]["value"]


def test_meanfield_uses_the_analytic_kl():
    """Same seed, same z: meanfield − Trace_ELBO = KL(q‖p) − [log q(z) − log p(z)], exactly."""
    model, guide = _vae()
    x = _x()
    z = _guide_draw(guide, x, 3)
    q, p = guide.z_dist(x), model.z_dist()
    kl = torch.distributions.kl_divergence(q, p).sum()
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum()
    losses = {}
    for name in ("elbo", "meanfield"):
        pyro.set_rng_seed(3)
        objective = build_objective(TrainConfig(objective=name))
        losses[name] = objective.differentiable_loss(model, guide, x)
    assert torch.allclose(losses["meanfield"] - losses["elbo"], kl - log_ratio, atol=1e-4)


@pytest.mark.parametrize("prior,guide", [("normal", "diagonal"), ("mixture", "full-rank"),
                                         ("flow", "iaf")])
def test_beta_scales_the_latent_site_in_model_and_guide(prior, guide):
    """Same seed: loss(β) − loss(1) = (β − 1)(log q(z) − log p(z)), the KL-type term only."""
    model, q_net = _vae(prior, guide)
    x = _x()
    objective = build_objective(TrainConfig())
    pyro.set_rng_seed(4)
    trace = poutine.trace(q_net).get_trace(x)
    z, log_q = trace.nodes["z"]["value"], trace.nodes["z"]["fn"].log_prob(trace.nodes["z"]["value"])
    log_ratio = (log_q - model.z_dist().log_prob(z)).sum()
    losses = []
    for beta in (1.0, 0.3):
        pyro.set_rng_seed(4)
        losses.append(objective.differentiable_loss(model, q_net, x, beta=beta))
    assert torch.allclose(losses[1] - losses[0], (0.3 - 1.0) * log_ratio, atol=1e-4)


def test_kl_warmup_is_linear_positive_and_reaches_beta():
    cfg = TrainConfig(beta=0.8, kl_warmup=4)
    steps = 10
    weights = [kl_weight(cfg, e, s, steps) for e in range(6) for s in range(steps)]
    assert min(weights) > 0  # poutine.scale refuses 0
    assert weights[25] == pytest.approx(0.8 * 2.5 / 4)
    assert weights[40:] == [0.8] * 20
    assert all(a <= b for a, b in zip(weights, weights[1:]))


def test_kl_warmup_fit_records_the_rising_beta():
    """A real fit with --kl-warmup 2: epoch 1 ends at β/2, epoch 2 at β, epoch 3 stays."""
    torch.manual_seed(0)
    data = from_tensor(torch.bernoulli(torch.full((60, 4, 4), 0.3)))
    model, guide = _vae_for(data.data_dim)
    cfg = TrainConfig(epochs=3, batch_size=16, beta=0.5, kl_warmup=2, device="cpu")
    result = fit(model, guide, data, cfg, progress=False)
    assert [r.beta for r in result.history] == pytest.approx([0.25, 0.5, 0.5])
    assert all(math.isfinite(r.train_elbo) for r in result.history)


def _vae_for(data_dim: int):
    return build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)), data_dim, seed=0)


def test_zero_beta_and_one_particle_iwae_are_refused_with_a_reason():
    from pyro_vae.infer.session import check_train_config

    with pytest.raises(ValueError, match="poutine.scale cannot weight"):
        check_train_config(TrainConfig(beta=0.0))
    with pytest.raises(ValueError, match="with one particle the importance-weighted bound"):
        build_objective(TrainConfig(objective="iwae", particles=1))


JIT_CASES = [(o, p, g) for o in ("elbo",) for p, g in
             [("normal", "diagonal"), ("normal", "full-rank"), ("normal", "iaf"),
              ("mixture", "diagonal"), ("mixture", "full-rank"), ("mixture", "iaf"),
              ("vamp", "diagonal"), ("vamp", "full-rank"),
              ("flow", "diagonal"), ("flow", "full-rank"), ("flow", "iaf")]]
JIT_CASES += [(o, p, g) for o in ("meanfield", "iwae")
              for p, g in [("normal", "diagonal"), ("vamp", "full-rank"), ("flow", "iaf")]]


@pytest.mark.parametrize("objective,prior,guide", JIT_CASES)
def test_jit_matches_untraced_loss_and_gradients(objective, prior, guide):
    """Under one seed the traced and untraced losses and all gradients agree (float32
    rounding differs between the two graphs, hence 1e-4). The second batch has another
    size and β, so the trace is reused across β and redone per shape."""
    model, q = _vae(prior, guide)
    _agree(build_objective(TrainConfig(objective=objective, particles=3)),
           build_objective(TrainConfig(objective=f"{objective}-jit", particles=3)), model, q)


def _agree(plain, other, model, q) -> None:
    """Under one seed, ``plain`` and ``other`` give the same loss and gradients (to float32
    rounding of differently ordered graphs: 1e-4) on batches of two sizes and three β."""
    params = unique_parameters(model, q)
    for n, beta in ((5, 1.0), (3, 0.4), (5, 0.7)):
        x = _x(n)
        results = []
        for loss_fn in (plain, other):
            pyro.set_rng_seed(7)
            loss = loss_fn.differentiable_loss(model, q, x, beta=beta)
            results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
        (l0, g0), (l1, g1) = results
        assert torch.allclose(l0, l1, rtol=1e-5, atol=1e-4)
        for a, b in zip(g0, g1):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def test_compiled_matches_untraced_loss_and_gradients():
    """elbo-compile under one seed: the same draws (torch's own random ops inside the
    compiled graph), so the same loss and gradients up to fused float ordering; a batch of
    another size and β compiles again and agrees too. Without a C++ compiler it falls
    back to the untraced loss, which agrees trivially (then the fallback is checked).
    One prior and guide only: each compilation takes ~13 s on a 2-core CPU."""
    model, q = _vae("mixture", "diagonal")
    compiled = build_objective(TrainConfig(objective="elbo-compile"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JitFallbackWarning)
        _agree(build_objective(TrainConfig(objective="elbo")), compiled, model, q)
    assert (compiled.fallback is None) == _has_cxx(), compiled.fallback
