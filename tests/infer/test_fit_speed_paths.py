"""The fast paths of ``fit`` are the same computation as the plain ones.

Each test runs the fast path and the plain path from the same seed and compares
losses, gradients and fitted parameters. No timing is asserted here (timings
live in benchmarks/bench_train.py).
"""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch

from pyro_vae.config import ModelConfig, RunConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.guides.amortized import GUIDES
from pyro_vae.infer.loop import fit
from pyro_vae.infer.objectives import OBJECTIVES, build_objective
from pyro_vae.infer.session import make_optimizer
from pyro_vae.models.priors import PRIORS
from pyro_vae.programs import unique_parameters
from pyro_vae.stories.build import build_vae


def _fit(config: RunConfig, train: TrainConfig):
    data = load_data(config.data)
    model, guide = build_vae(config.model, data.data_dim, seed=train.seed)
    return fit(model, guide, data, train, progress=False)


def _plain_adam(model, guide, cfg, device=None):
    return torch.optim.Adam(unique_parameters(model, guide), lr=cfg.lr, foreach=False)


def _assert_same_fit(a, b, atol: float) -> None:
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra.train_elbo == pytest.approx(rb.train_elbo, abs=atol * 100)
        assert ra.val_elbo == pytest.approx(rb.val_elbo, abs=atol * 100)
    pa = torch.cat([p.detach().flatten() for p in unique_parameters(a.model, a.guide)])
    pb = torch.cat([p.detach().flatten() for p in unique_parameters(b.model, b.guide)])
    torch.testing.assert_close(pa, pb, rtol=0, atol=atol)


def test_default_optimizer_is_fused_on_cpu():
    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)), 16, seed=0)
    opt = make_optimizer(model, guide, TrainConfig(), torch.device("cpu"))
    assert opt.param_groups[0]["fused"] is True
    assert sum(len(g["params"]) for g in opt.param_groups) == len(unique_parameters(model, guide))


def test_fused_adam_fit_matches_plain_adam(tiny_config: RunConfig, monkeypatch):
    """Same seed, same batches, same ELBO draws: only Adam's kernel differs. Both do
    the same float32 update in a different order, so they differ by rounding
    (~1e-7 per step). A different update rule (another eps, bias correction or
    weight decay) would move parameters by ~lr = 1e-3 per step, far above 1e-6."""
    train = TrainConfig(epochs=3, batch_size=128, device="cpu", seed=3)
    fast = _fit(tiny_config, train)
    assert fast.optimizer.param_groups[0]["fused"] is True
    monkeypatch.setattr(importlib.import_module("pyro_vae.infer.session"), "make_optimizer", _plain_adam)
    plain = _fit(tiny_config, train)
    assert not plain.optimizer.param_groups[0]["fused"]
    _assert_same_fit(fast, plain, atol=1e-6)


@pytest.mark.parametrize("name", ["elbo"])
def test_jit_objective_same_loss_and_gradients(tiny_config: RunConfig, name: str):
    """One step of ``<name>-jit`` against ``<name>``, same seed: the traced loss
    replays the same ops on the same random stream, so loss and every gradient
    agree to float32 rounding."""
    jit_name = f"{name}-jit"
    if jit_name not in OBJECTIVES:
        pytest.fail(f"objective {jit_name!r} is not registered")
    data = load_data(tiny_config.data)
    x = data.eval_split("train")[:100]
    grads = {}
    for objective in (name, jit_name):
        model, guide = build_vae(tiny_config.model, data.data_dim, seed=0)
        loss_fn = build_objective(TrainConfig(objective=objective))
        torch.manual_seed(7)
        loss = loss_fn.differentiable_loss(model, guide, x, beta=0.5)
        loss.backward()
        grads[objective] = (loss.detach(), [p.grad for p in unique_parameters(model, guide)])
    (l0, g0), (l1, g1) = grads[name], grads[jit_name]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-4)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_jit_fit_matches_eager_fit(tiny_config: RunConfig):
    """Whole fits, with KL warm-up (β changes every step) and a short last batch
    (a second trace): same history and parameters as the eager objective. The
    tolerance allows rounding differences of traced vs eager kernels to grow
    over 2 epochs of Adam; a wrong gradient would differ by ~lr per step."""
    train = TrainConfig(epochs=2, batch_size=300, device="cpu", seed=5, kl_warmup=2)
    eager = _fit(tiny_config, train)
    jit = _fit(tiny_config, TrainConfig(**{**train.__dict__, "objective": "elbo-jit"}))
    _assert_same_fit(eager, jit, atol=1e-5)


def check_pair(prior: str, guide: str) -> None:
    build_vae(ModelConfig(latent_dim=2, hidden_sizes=(4,), prior=prior, guide=guide), 8, seed=0)


def _buildable() -> list[tuple[str, str]]:
    """Every prior × guide pair the builder accepts (a few pairs are refused by design)."""
    pairs = []
    for prior, guide in itertools.product(PRIORS, GUIDES):
        try:
            check_pair(prior, guide)
        except ValueError:
            continue
        pairs.append((prior, guide))
    return pairs


@pytest.mark.parametrize("prior, guide", _buildable())
def test_jit_elbo_equals_elbo_for_every_prior_and_guide(prior: str, guide: str):
    """The traced ELBO is the same function of parameters and noise for every registered
    part, so ``elbo-jit`` may stand in for ``elbo`` with any of them. Traced and eager
    kernels agree to float32 rounding (~1e-6 of gradients of size ~10)."""
    cfg = ModelConfig(latent_dim=2, hidden_sizes=(16,), prior=prior, guide=guide)
    x = torch.bernoulli(torch.rand(50, 64, generator=torch.Generator().manual_seed(0)))
    out = []
    for objective in ("elbo", "elbo-jit"):
        model, guide_module = build_vae(cfg, 64, seed=0)
        torch.manual_seed(3)
        loss = build_objective(TrainConfig(objective=objective)).differentiable_loss(
            model, guide_module, x, beta=0.7)
        loss.backward()
        params = unique_parameters(model, guide_module)
        out.append((loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad for p in params]))
    (l0, g0), (l1, g1) = out
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-3)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
