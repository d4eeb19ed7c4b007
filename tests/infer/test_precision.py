"""Precision settings of the fit: what each changes, what stays float32, and what is restored."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.infer.loop import fit
from pyro_vae.infer.objectives import build_objective
from pyro_vae.infer.precision import PRECISIONS, bf16_products
from pyro_vae.stories.build import build_vae

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def _vae(digits, **model):
    return build_vae(ModelConfig(hidden_sizes=(32,), latent_dim=4, **model), digits.data_dim, seed=0)


def _loss(model, guide, x, precision: str, objective: str = "elbo", seed: int = 0) -> torch.Tensor:
    """The objective's loss on ``x`` under ``precision``, with the draws of ``seed``."""
    setting = PRECISIONS[precision]
    loss_fn = build_objective(TrainConfig(objective=objective))
    pyro.set_rng_seed(seed)
    with setting.attach(torch.nn.ModuleDict({"m": model, "g": guide}), DEVICE), \
            setting.forward(DEVICE):
        return loss_fn.differentiable_loss(model, guide, x, beta=1.0, batch={})


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_every_precision_fits_with_float32_parameters_and_state(digits, precision):
    model, guide = _vae(digits)
    before = torch.get_float32_matmul_precision()
    result = fit(model, guide, digits, TrainConfig(epochs=2, batch_size=64, device="cpu",
                                                   precision=precision), progress=False)
    assert torch.get_float32_matmul_precision() == before  # fp32-medium puts it back
    assert all(torch.isfinite(torch.tensor(r.val_elbo)) for r in result.history)
    tensors = [p for p in result.model.parameters()] + [p for p in result.guide.parameters()]
    tensors += [v for s in result.optimizer.state.values() for v in s.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    assert {t.dtype for t in tensors} == {torch.float32}
    # The output casts are gone after the fit: a product layer returns what autocast makes.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert result.guide.encoder(digits.val.x[:2]).dtype == torch.bfloat16


@pytest.mark.parametrize("guide_name", ["diagonal", "full-rank", "iaf"])
def test_bf16_keeps_every_log_density_and_the_loss_in_float32(digits, guide_name):
    """Only the layers' products are bfloat16: a full-rank guide's scale_tril @ ε and the
    IAF's transforms of z run in float32, and so does every log-density."""
    model, guide = _vae(digits, guide=guide_name)
    x = digits.val.x[:16]
    with bf16_products(torch.nn.ModuleDict({"m": model, "g": guide}), DEVICE):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["log_prob"].dtype == torch.float32, name
                assert site["value"].dtype == torch.float32, name
    assert _loss(model, guide, x, "bf16").dtype == torch.float32


def test_bf16_products_are_rounded_and_nothing_else(digits):
    model, guide = _vae(digits)
    x = digits.val.x[:64]
    exact, rounded = _loss(model, guide, x, "fp32").detach(), _loss(model, guide, x, "bf16").detach()
    # Same draws (seeded), so the difference is rounding alone. bfloat16 keeps 8 bits of
    # mantissa (relative error ≤ 2^-9 per input); over a loss of ~64·45 nats the rounding
    # moves it by far less than 1 % but, on products of this size, by more than float32's 1e-6.
    assert abs(float(rounded) - float(exact)) < 1e-2 * abs(float(exact))
    assert float(rounded) != float(exact)


def test_traced_and_untraced_losses_agree_under_bf16(digits):
    model, guide = _vae(digits)
    x = digits.val.x[:32]
    eager = _loss(model, guide, x, "bf16", "elbo", seed=3)
    traced = _loss(model, guide, x, "bf16", "elbo-jit", seed=3)
    traced = _loss(model, guide, x, "bf16", "elbo-jit", seed=3)  # the second call runs the trace
    assert torch.allclose(eager, traced, rtol=1e-5)


def test_fp32_medium_is_set_inside_and_restored_after():
    before = torch.get_float32_matmul_precision()
    with PRECISIONS["fp32-medium"].forward(DEVICE):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before


def test_an_unknown_precision_is_refused_by_name(digits):
    model, guide = _vae(digits)
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid precision names: bf16"):
        fit(model, guide, digits, TrainConfig(epochs=1, device="cpu", precision="fp16"),
            progress=False)
