"""Fitting: the validation ELBO improves, fits share no state, early stopping, warm-up."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.infer.loop import fit, kl_weight, mean_elbo
from pyro_vae.infer.session import make_optimizer
from pyro_vae.stories.build import build_vae


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def _fit(digits, **train):
    model, guide = build_vae(ModelConfig(hidden_sizes=(64,)), digits.data_dim, seed=0)
    cfg = TrainConfig(**{"epochs": 5, "batch_size": 64, "device": "cpu", **train})
    return fit(model, guide, digits, cfg, progress=False)


def test_short_fit_improves_validation_elbo(digits):
    model, guide = build_vae(ModelConfig(hidden_sizes=(64,)), digits.data_dim, seed=0)
    val = digits.eval_split("val")
    torch.manual_seed(0)
    before = mean_elbo(model, guide, val)
    result = fit(model, guide, digits, TrainConfig(epochs=15, batch_size=64, device="cpu"),
                 progress=False)
    # The single-sample validation ELBO has a standard error of ~0.3 nats on 180 images;
    # 15 epochs move it by well over 10 nats.
    assert result.history[-1].val_elbo > before + 10
    assert len(result.history) == 15
    assert all(r.images_per_second > 0 for r in result.history)


def test_fits_share_no_parameter_store_state(digits):
    a = _fit(digits, epochs=2)
    assert len(pyro.get_param_store()) == 0
    b = _fit(digits, epochs=2)
    assert a.history == [] or [r.train_elbo for r in a.history] == [r.train_elbo for r in b.history]


def test_same_seed_same_fit_different_seed_different_fit(digits):
    a, b, c = _fit(digits, epochs=2), _fit(digits, epochs=2), _fit(digits, epochs=2, seed=1)
    assert [r.train_elbo for r in a.history] == [r.train_elbo for r in b.history]
    assert a.history[-1].train_elbo != c.history[-1].train_elbo


def test_early_stopping_restores_the_best_epoch(digits):
    # A learning rate this large makes the validation ELBO stall or worsen within a few epochs.
    result = _fit(digits, epochs=60, lr=0.05, early_stopping=2)
    assert result.stopped_early
    best = max(r.val_elbo for r in result.history)
    assert result.best_val_elbo == best
    torch.manual_seed(0)
    again = mean_elbo(result.model, result.guide, digits.eval_split("val"), batch_size=4096)
    assert again == pytest.approx(best, abs=3.0), "parameters are those of the best epoch"


def test_kl_warmup_is_linear_then_flat():
    cfg = TrainConfig(beta=2.0, kl_warmup=4)
    # poutine.scale refuses 0, so the ramp starts one step in: β · (1/10) / 4.
    assert kl_weight(cfg, 0, 0, 10) == pytest.approx(2.0 * 0.1 / 4)
    assert kl_weight(cfg, 0, 3, 10) == pytest.approx(2.0 * 0.3 / 4)
    assert kl_weight(cfg, 1, 5, 10) == pytest.approx(2.0 * 1.5 / 4)
    assert kl_weight(cfg, 7, 0, 10) == 2.0
    assert kl_weight(TrainConfig(beta=0.5), 0, 0, 10) == 0.5


def test_adam_defaults_are_torchs_and_betas_and_eps_reach_the_optimizer():
    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)), 16, seed=0)
    plain = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]).defaults
    group = make_optimizer(model, guide, TrainConfig(), torch.device("cpu")).param_groups[0]
    assert (group["betas"], group["eps"]) == (plain["betas"], plain["eps"]) == ((0.9, 0.999), 1e-8)
    cfg = TrainConfig(adam_betas=(0.5, 0.9), adam_eps=1e-4)
    group = make_optimizer(model, guide, cfg, torch.device("cpu")).param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.5, 0.9), 1e-4)


def test_adams_eps_changes_the_update(digits):
    """Through a whole fit: eps 1e-4 (Burda et al.'s) damps the steps of parameters with
    small gradients, so the fit is not the default's."""
    a, b = _fit(digits, epochs=1), _fit(digits, epochs=1, adam_eps=1e-4)
    assert a.history[-1].train_elbo != b.history[-1].train_elbo


class TwoDecoders:
    """Two linear decoders switched by an enumerated component, for each row:

    .. code-block:: text

        c ~ Categorical(1/2)       enumerated: summed out, never drawn
        z ~ N(0, 1)
        x ~ N(b_c + w_c z, 0.1² I_4)

    with b_0 = 0.2 and b_1 = 0.8: a row's two components lie far apart, so an ELBO that draws
    c from the prior instead of summing it scores half its rows under the wrong decoder."""

    def __call__(self, x: torch.Tensor) -> None:
        import pyro.distributions as dist

        w = pyro.param("w", torch.full((2, x.shape[1]), 0.05))
        b = pyro.param("b", torch.tensor([[0.2], [0.8]]).expand(2, x.shape[1]).clone())
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(b[c] + w[c] * z.unsqueeze(-1), 0.1).to_event(1), obs=x)


def z_guide(x: torch.Tensor) -> None:
    """q(z | x) = N(0, s²), s learned: the guide leaves c to the story's sum."""
    import pyro.distributions as dist
    from torch.distributions import constraints

    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), scale))


def test_validation_elbo_of_an_enumerated_story_sums_the_component_out():
    """The ELBO logged for validation is the one ``evaluate`` reports on the same rows, c
    summed in both. Tolerance: the logged number averages one draw of log w per row over N
    rows, evaluate's K draws per row, both over the same rows (the rows' spread cancels), so
    their difference has standard error √(v/N · (1 + 1/K)), v the mean over rows of the
    variance of log w across draws; 4 of those. Drawing c instead (Trace_ELBO) costs about
    half of 4 · 0.6² / (2 · 0.1²) = 72 nats per row, far outside it."""
    from pyro_vae.data.loading import from_tensor
    from pyro_vae.evaluation.importance import evaluate, log_importance_weights

    gen = torch.Generator().manual_seed(0)
    component = torch.randint(0, 2, (600, 1), generator=gen)
    x = (0.2 + 0.6 * component + 0.1 * torch.randn(600, 4, generator=gen)).clamp(0, 1)
    data = from_tensor(x, cfg=DataConfig(name="tensor", binarize="none"), binary_likelihood=False)
    result = fit(TwoDecoders(), z_guide, data, TrainConfig(epochs=3, batch_size=100, device="cpu",
                                                           objective="enum", lr=0.02), progress=False)
    val = data.eval_split("val")
    k = 500
    scored = evaluate(result.model, result.guide, val, num_samples=k)
    pyro.set_rng_seed(1)
    log_w = log_importance_weights(result.model, result.guide, val, k)  # [K, N]
    se = (log_w.var(0).mean() / len(val) * (1 + 1 / k)).sqrt()
    logged = result.history[-1].val_elbo
    assert abs(logged - scored.elbo.mean) < 4 * float(se), (logged, scored.elbo.mean, float(se))
