"""The story contract in code: programs own their parameters, β is applied from outside,
per-row extras reach the stories that name them, and a JIT trace is never trusted blindly."""

from __future__ import annotations

import inspect
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from pyro_vae.config import DataConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.infer.loop import fit
from pyro_vae.infer.objectives import build_objective
from pyro_vae.jit import JitFallbackWarning
from pyro_vae.programs import LatentScale, Program, as_program

D = 6


def _data(n: int = 64, labels: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, D, generator=gen) < 0.3).float()
    y = torch.arange(n) % 3 if labels else None
    return from_tensor(x, y, DataConfig(name="tensor", binarize="none"))


def param_story():
    """z ~ N(0, 1); x_d ~ Bernoulli(logits = net(z)_d · scale + bias_d), with ``scale`` > 0 and
    ``bias`` from pyro.param and ``net`` from pyro.module: a plain function, no nn.Module."""
    net = nn.Linear(1, D)

    def model(x):
        pyro.module("net", net)
        bias = pyro.param("bias", torch.zeros(D))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net(z) * scale + bias).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", torch.zeros(D, 1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ w, 1.0).to_event(1))

    return model, guide, net


def test_pyro_param_and_module_parameters_are_trained_and_kept_with_the_program():
    model, guide, net = param_story()
    before = net.weight.detach().clone()
    store_before = set(pyro.get_param_store().keys())
    result = fit(model, guide, _data(), TrainConfig(epochs=3, batch_size=16, device="cpu",
                                                    objective="elbo"), progress=False)
    assert set(result.model.param_names) == {"net$$$weight", "net$$$bias", "bias", "scale"}
    assert not torch.equal(net.weight, before), "pyro.module's network was not trained"
    assert not torch.equal(result.model.param("bias"), torch.zeros(D))
    scale = float(result.model.param("scale").detach())
    assert scale > 0 and scale != 1.0
    assert not torch.equal(result.guide.param("w"), torch.zeros(D, 1))
    assert set(pyro.get_param_store().keys()) == store_before, "the global param store was used"


def test_two_fits_do_not_share_parameters():
    runs = [fit(*param_story()[:2], _data(), TrainConfig(epochs=1, batch_size=16, device="cpu"),
                progress=False) for _ in range(2)]
    a, b = (r.model.param("bias") for r in runs)
    assert a is not b
    with torch.no_grad():
        runs[0].model.params[runs[0].model._keys["bias"]].add_(100.0)
    assert float((runs[1].model.param("bias") - a).detach().abs().max()) > 50


def test_a_parameter_first_seen_after_training_started_is_refused_by_name():
    seen = {"calls": 0}

    def model(x):
        seen["calls"] += 1
        offset = pyro.param("late", torch.zeros(D)) if seen["calls"] > 3 else 0.0
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z + offset).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"'late'.*after training started"):
        fit(model, guide, _data(), TrainConfig(epochs=1, batch_size=16, device="cpu",
                                               objective="elbo"), progress=False)


def test_latent_scale_weights_latent_sites_and_leaves_observed_ones():
    model, _, _ = param_story()
    program = as_program(model)
    x = _data().train.x[:5]
    pyro.set_rng_seed(0)
    plain = poutine.trace(program).get_trace(x)
    pyro.set_rng_seed(0)
    scaled = poutine.trace(LatentScale(0.25)(program)).get_trace(x)
    for trace in (plain, scaled):
        trace.compute_log_prob()
    assert torch.allclose(scaled.nodes["z"]["log_prob_sum"], 0.25 * plain.nodes["z"]["log_prob_sum"])
    assert torch.equal(scaled.nodes["x"]["log_prob_sum"], plain.nodes["x"]["log_prob_sum"])


def test_per_row_extras_reach_stories_that_name_them_sliced_with_x():
    rows = []

    def model(x, y):
        rows.append((x.shape[0], y.clone()))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(y.float().unsqueeze(-1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.expand(-1, D)).to_event(1), obs=x)

    def guide(x):  # names no extras: receives none
        loc = pyro.param("loc", torch.zeros(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 1), 1.0).to_event(1))

    data = _data(labels=True)
    fit(model, guide, data, TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)
    assert all(n == len(y) for n, y in rows)
    assert any(len(set(y.tolist())) > 1 for _, y in rows)
    with pytest.raises(ValueError, match=r"takes 'y' for every row.*no per-row fields"):
        fit(model, guide, _data(), TrainConfig(epochs=1, device="cpu"), progress=False)


def branchy_story(x):
    """Value-dependent control flow: the likelihood's logits depend on the sign of a draw,
    which a torch.jit trace would freeze at the tracing call's branch."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        logits = z.expand(-1, D) * 3.0 if bool(z.sum() > 0) else -z.expand(-1, D)
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def branchy_guide(x):
    loc = pyro.param("loc", torch.zeros(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc.expand(x.shape[0], 1), 1.0).to_event(1))


def test_jit_falls_back_with_a_note_when_control_flow_depends_on_values():
    data = _data()
    with pytest.warns(JitFallbackWarning, match="reads a tensor's value"):
        result = fit(branchy_story, branchy_guide, data, TrainConfig(epochs=2, batch_size=16,
                                                                     device="cpu"), progress=False)
    assert all(torch.isfinite(torch.tensor(r.train_elbo)) for r in result.history)


def test_jit_fallback_warning_points_at_the_story_line_not_at_pyro_vae():
    """The warning is shown at the story's line that reads a value (where the reason says),
    not at pyro-vae's objectives module."""
    with pytest.warns(JitFallbackWarning, match="reads a tensor's value") as caught:
        fit(branchy_story, branchy_guide, _data(), TrainConfig(epochs=1, batch_size=16,
                                                               device="cpu"), progress=False)
    shown = [w for w in caught if issubclass(w.category, JitFallbackWarning)][0]
    source, first = inspect.getsourcelines(branchy_story)
    line = first + next(i for i, text in enumerate(source) if "bool(z.sum()" in text)
    assert (shown.filename, shown.lineno) == (__file__, line)
    assert f"{__file__}:{line}" in str(shown.message)


def test_jit_check_compares_against_the_untraced_loss_on_later_batches():
    """A branch the tracer cannot see (a Python float, no TracerWarning) is caught by the
    numeric check on the next batch: the loss then equals the untraced loss."""
    state = {"calls": 0}

    def model(x):
        state["calls"] += 1
        factor = 1.0 if state["calls"] == 1 else 2.0  # differs after the tracing call
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=factor * z.expand(-1, D)).to_event(1), obs=x)

    objective = build_objective(TrainConfig(objective="elbo-jit"))
    model_p, guide_p = Program(model), Program(branchy_guide)
    x = _data().train.x[:8]
    guide_p(x)  # create the guide's parameter
    with pytest.warns(JitFallbackWarning, match="differs from the untraced") as caught:
        objective.differentiable_loss(model_p, guide_p, x)
    assert objective.fallback is not None
    assert caught[0].filename == __file__  # the caller's line, not pyro-vae's


def test_jit_is_kept_for_the_built_in_vae_with_identical_numbers():
    from pyro_vae.config import ModelConfig
    from pyro_vae.stories.build import build_vae

    model, guide = (Program(m) for m in build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)),
                                                   D, seed=0))
    x = _data().train.x[:16]
    jit, plain = (build_objective(TrainConfig(objective=o)) for o in ("elbo-jit", "elbo"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        for _ in range(3):
            pyro.set_rng_seed(1)
            a = jit.differentiable_loss(model, guide, x, beta=0.5)
            pyro.set_rng_seed(1)
            b = plain.differentiable_loss(model, guide, x, beta=0.5)
            assert torch.allclose(a, b, rtol=1e-5)
    assert jit.fallback is None
