"""The whole step compiled as one program (pyro_vae/infer/fused.py) against the eager step.

A compiled fit costs ~25 s of compiling on a 2-core CPU the first time its program is
seen (later fits of the same program find it in inductor's cache): a user's labelled
story with gradient clipping (the ELBO in float32 and with bfloat16 products, and IWAE), a
deliberately wrong program the checks must catch, a program that cannot be recorded, and
an interrupted fit resumed. The rest tests the choice of path.
"""

from __future__ import annotations

import json
import shutil
import warnings
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.config import DataConfig, TrainConfig
from pyro_vae.data.loading import load_data
from pyro_vae.infer import fused as fused_module
from pyro_vae.infer.fused import FusedStep, auto_wait, unfusable
from pyro_vae.infer.loop import fit
from pyro_vae.infer.objectives import build_objective
from pyro_vae.jit import JitFallbackWarning
from pyro_vae.runs.folders import write_summary

HAS_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="torch.compile needs a C++ compiler on CPU")


def _onehot(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # Not nn.functional.one_hot: it reads the labels' range in Python, which no recording can.
    return torch.eye(10, dtype=x.dtype, device=x.device)[y]


class LabelledStory(nn.Module):
    """z ~ N(0, I_4); x ~ Bernoulli(logits = f([z, onehot(y)])): a user's story with labels."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(4 + 10, 32), nn.Softplus(), nn.Linear(32, 64))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(4), 1.0).to_event(1))
            h = torch.cat([z, _onehot(y, x).expand(*z.shape[:-1], 10)], -1)  # particles too
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=x)


class LabelledGuide(nn.Module):
    """z ~ N(μ(x, y), σ(x, y))."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64 + 10, 32), nn.Softplus(), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        h = self.encoder(torch.cat([x, _onehot(y, x)], -1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :4], nn.functional.softplus(h[:, 4:]) + 1e-3)
                        .to_event(1))


def _fit(objective: str, story=LabelledStory, guide=LabelledGuide, stop=None, **config):
    """A 3-epoch fit on digits (last batch partial) and the session it ran in."""
    torch.manual_seed(0)
    model, q = story(), guide()
    sessions = []
    cfg = TrainConfig(epochs=3, batch_size=100, objective=objective, seed=0, **config)
    result = fit(model, q, load_data(DataConfig(name="digits")), cfg, progress=False, stop=stop,
                 callbacks=[lambda s, *_: sessions.append(s)])
    return result, sessions[0] if sessions else None


def _same_fit(a, b) -> None:
    """Equal validation ELBOs (float rounding of a differently ordered program: 1e-4 nats)
    and the same Adam state, step counts included."""
    for x, y in zip(a.history, b.history):
        assert x.val_elbo == pytest.approx(y.val_elbo, abs=1e-4)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert float(sa[k]["step"]) == float(sb[k]["step"])
        for slot in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[k][slot], sb[k][slot], rtol=1e-3, atol=1e-6)


@needs_cxx
@pytest.mark.parametrize("objective, options", [
    ("elbo", {}),
    ("elbo", {"precision": "bf16"}),  # the layers' bfloat16 products recorded as they run
    ("iwae", {"particles": 3}),
])
def test_fused_fit_equals_the_eager_fit(objective: str, options: dict, tmp_path):
    """A labelled user story with clipping: every full batch through the program (the first
    two checked), the partial last batch eager, and the fit the same as the eager one's."""
    eager, _ = _fit(objective, clip_norm=5.0, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        fused, session = _fit(f"{objective}-compile", clip_norm=5.0, **options)
    steps = session.steps_per_epoch
    assert session.fused.fallback is None
    assert session.fused.taken == 3 * (steps - 1) - 2  # all full batches, less the checks
    assert fused.compiled_step == {"steps": session.fused.taken, "fallback": None}
    assert eager.compiled_step is None
    write_summary(tmp_path, fused)  # the run folder says whether the program ran
    assert json.loads((tmp_path / "summary.json").read_text())["compiled_step"]["steps"] > 0
    _same_fit(eager, fused)


@needs_cxx
def test_a_wrong_program_is_caught_and_the_fit_goes_on_eagerly(monkeypatch):
    """A program fed the wrong β (half the KL weight the fit asks for) disagrees with the
    eager step on the first checked call: a warning names what differed, and the fit
    equals ``elbo``'s. (A wrong input, not a wrong graph: every compiled fit here records the
    same program, clipping included, so inductor compiles it once.)"""
    original = FusedStep._inputs

    def wrong(self, index, beta):
        return original(self, index, beta * 0.5)

    monkeypatch.setattr(FusedStep, "_inputs", wrong)
    eager, _ = _fit("elbo", clip_norm=5.0)
    with pytest.warns(JitFallbackWarning, match="loss differs"):
        fused, session = _fit("elbo-compile", clip_norm=5.0)
    assert session.fused.taken == 0 and "differs from the eager step" in session.fused.fallback
    assert fused.compiled_step["fallback"] == session.fused.fallback
    _same_fit(eager, fused)


class ReadingStory(LabelledStory):
    """Reads a value in Python: make_fx cannot record the branch."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if float(x.mean()) > 2.0:  # never true for pixels in [0, 1]
            x = x * 0
        super().forward(x, y)


def test_a_program_that_cannot_be_recorded_falls_back():
    eager, _ = _fit("elbo", story=ReadingStory)
    with pytest.warns(JitFallbackWarning, match="make_fx could not record it"):
        fused, session = _fit("elbo-compile", story=ReadingStory)
    assert session.fused.taken == 0
    _same_fit(eager, fused)


def _session(**changes) -> SimpleNamespace:
    params = [nn.Parameter(torch.zeros(3))]
    base = dict(optimizer=torch.optim.Adam(params), ddp=None,
                config=TrainConfig(objective="elbo-compile"),
                data=SimpleNamespace(train=SimpleNamespace(x=torch.zeros(4, 3))))
    return SimpleNamespace(**{**base, **changes})


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    (dict(ddp=object()), "several processes"),
    (dict(data=SimpleNamespace(train=SimpleNamespace(x=object()))), "streamed"),
    (dict(optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)), "plain Adam"),
    (dict(optimizer=torch.optim.Adam([nn.Parameter(torch.zeros(1))], amsgrad=True)), "plain Adam"),
    (dict(optimizer=torch.optim.Adam([nn.Parameter(torch.zeros(1))], weight_decay=0.1)),
     "plain Adam"),
])
def test_when_the_step_is_one_program(change, reason):
    why = unfusable(_session(**change), build_objective(TrainConfig(objective="elbo-compile")))
    assert why is None if reason is None else reason in why


def test_the_program_takes_adams_betas_and_eps_from_the_optimizer():
    params = [nn.Parameter(torch.zeros(3))]
    session = _session(optimizer=torch.optim.Adam(params, betas=(0.5, 0.9), eps=1e-4),
                       config=TrainConfig(objective="elbo-compile", batch_size=4),
                       data=SimpleNamespace(train=torch.zeros(4, 3)))
    step = FusedStep(session, build_objective(session.config), eager=None)
    assert (step.betas, step.eps) == ((0.5, 0.9), 1e-4)


def test_other_objectives_keep_the_eager_step():
    why = unfusable(_session(), build_objective(TrainConfig(objective="elbo-jit")))
    assert "not a compiled one" in why
    assert unfusable(_session(), build_objective(TrainConfig(objective="elbo-auto"))) is None


@needs_cxx
def test_the_program_follows_the_schedule_and_adams_settings():
    """The rate changes every epoch (the program reads it from the optimizer at each step);
    Adam's betas and eps are not torch's defaults: the compiled fit is still the traced one."""
    settings = dict(clip_norm=5.0, lr=0.01, lr_schedule="step", adam_betas=(0.8, 0.95),
                    adam_eps=1e-4, options={"lr_schedule": {"step": {"every": 1, "gamma": 0.3}}})
    traced, _ = _fit("elbo-jit", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        compiled, _ = _fit("elbo-compile", **settings)
    assert [h.lr for h in compiled.history] == pytest.approx([0.01, 0.003, 0.0009], rel=1e-12)
    assert compiled.compiled_step["steps"] > 0
    _same_fit(traced, compiled)


@needs_cxx
def test_an_interrupted_fused_fit_resumes_where_it_stopped():
    """Stopped in its second epoch and resumed from its state and Adam's (as a checkpoint
    holds them), a fused fit ends where the uninterrupted one does; the resumed fit
    records its program again (inductor's cache makes that quick) and checks it again."""
    whole, _ = _fit("elbo-compile", clip_norm=5.0)
    polls = iter(range(10**6))
    part, _ = _fit("elbo-compile", stop=lambda: next(polls) == 20, clip_norm=5.0)
    assert part.interrupted and part.state.epoch == 1
    torch.manual_seed(0)
    rest = fit(part.model, part.guide, load_data(DataConfig(name="digits")),
               TrainConfig(epochs=3, batch_size=100, objective="elbo-compile", seed=0,
                           clip_norm=5.0),
               state=part.state, optimizer_state=part.optimizer.state_dict(), progress=False)
    assert [h.val_elbo for h in rest.history] == pytest.approx(
        [h.val_elbo for h in whole.history], abs=1e-5)


@needs_cxx
def test_the_default_compiles_where_it_pays(monkeypatch):
    """``elbo-auto`` with the thresholds scaled down to this 45-step fit: ``elbo-jit``'s
    steps up to step 20, then the program (checked on its first two calls) for every full
    batch, and the fit the same as ``elbo-jit``'s."""
    monkeypatch.setattr(fused_module, "AUTO_AFTER", 20)
    monkeypatch.setattr(fused_module, "AUTO_LEFT", 10)
    traced, _ = _fit("elbo-jit", clip_norm=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        auto, session = _fit("elbo-auto", clip_norm=5.0)
    steps = session.steps_per_epoch
    full = [s for s in range(20, 3 * steps) if s % steps != steps - 1]  # the last is partial
    assert auto.compiled_step == {"steps": len(full) - 2, "fallback": None}
    _same_fit(traced, auto)


def test_the_default_on_a_short_fit_is_the_traced_step(monkeypatch):
    """Too few steps left after ``AUTO_AFTER`` to repay compiling: nothing is compiled and
    the fit is ``elbo-jit``'s to the last bit."""
    monkeypatch.setattr(fused_module, "AUTO_AFTER", 20)
    monkeypatch.setattr(fused_module, "AUTO_LEFT", 40)
    traced, _ = _fit("elbo-jit")
    auto, session = _fit("elbo-auto")
    assert auto.compiled_step is None and session.fused is None
    assert [h.val_elbo for h in auto.history] == [h.val_elbo for h in traced.history]


@pytest.mark.parametrize("done, planned, wait", [
    (0, 22_000, 2_000),  # a fresh fit planned for exactly enough steps
    (0, 21_999, None),
    (1_500, 30_000, 500),  # resumed before the switch: it happens at step 2,000 all the same
    (5_000, 25_000, 0),  # resumed after it: the program at once
    (5_000, 24_999, None),
])
def test_when_the_default_compiles(done: int, planned: int, wait: int | None):
    assert (fused_module.AUTO_AFTER, fused_module.AUTO_LEFT) == (2_000, 20_000)
    assert auto_wait(done, planned) == wait


class NormalizedStory(LabelledStory):
    """A decoder with batch norm, whose running statistics the forward updates in place."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(4 + 10, 32), nn.BatchNorm1d(32), nn.Softplus(),
                                     nn.Linear(32, 64))


@pytest.mark.parametrize("objective", ["elbo-jit", "elbo-compile"])
def test_a_story_that_updates_buffers_trains_eagerly(objective: str):
    """A recording would not replay batch norm's running-statistics update (the traced loss
    skipped it; the program read the buffer as a constant), so both refuse such a story
    by the buffer's name and train it eagerly: the same fit and the same running statistics
    as ``elbo``, and no extra updates from recording."""
    eager, _ = _fit("elbo", story=NormalizedStory)
    with pytest.warns(JitFallbackWarning, match="updates the buffer"):
        other, _ = _fit(objective, story=NormalizedStory)
    _same_fit(eager, other)
    for a, b in zip(eager.model.buffers(), other.model.buffers()):
        torch.testing.assert_close(a, b)
