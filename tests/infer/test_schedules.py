"""Learning-rate schedules (pyro_vae/infer/schedules.py): each rate against its formula, and for
every schedule a fit stopped and resumed that equals the uninterrupted fit bit for bit."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

import pytest
import torch

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.infer.loop import fit
from pyro_vae.infer.schedules import BURDA_EPOCHS, SCHEDULES, check_schedule, learning_rate
from pyro_vae.infer.session import check_train_config
from pyro_vae.runs.folders import METRICS, load_run_data, resume_run, train_run
from pyro_vae.stories.build import build_vae

from support import reference_fit, same_result  # the uninterrupted fit; a run folder against it


def _train(name: str, epochs: int = 16, lr: float = 0.1, **options) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=256, lr=lr, device="cpu", lr_schedule=name,
                       options={"lr_schedule": {name: options}} if options else {})


def _rates(cfg: TrainConfig, vals=()) -> list[float]:
    """The rate of every planned epoch, epoch e seeing the validation ELBOs ``vals[:e]``."""
    return [learning_rate(cfg, e, list(vals)[:e]) for e in range(cfg.epochs)]


def test_constant_is_the_base_rate_whatever_the_history():
    cfg = _train("constant", epochs=5, lr=3e-4)
    assert _rates(cfg, [-30.0, -31.0, -32.0, -33.0]) == [3e-4] * 5


def test_burda_is_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7():
    cfg = _train("burda", epochs=BURDA_EPOCHS, lr=1e-3)
    expected = [1e-3 * 10 ** (-i / 7) for i in range(8) for _ in range(3 ** i)]
    assert len(expected) == BURDA_EPOCHS == 3280
    assert _rates(cfg) == expected
    # Written out: epoch 1 at lr, the next 3 at lr·10^(-1/7), the next 9 at lr·10^(-2/7)...
    assert _rates(cfg)[:14] == [1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3 + \
        [1e-3 * 10 ** (-2 / 7)] * 9 + [1e-3 * 10 ** (-3 / 7)]
    assert _rates(cfg)[-1] == pytest.approx(1e-4, rel=1e-15)  # the last 2,187 at lr / 10
    assert _rates(cfg)[-2188] == pytest.approx(1e-3 * 10 ** (-6 / 7), rel=1e-15)


def test_a_shorter_burda_fit_runs_the_schedules_first_epochs_and_a_longer_one_is_refused():
    short = _train("burda", epochs=20, lr=1e-3)
    check_schedule(short)
    assert _rates(short) == _rates(_train("burda", epochs=BURDA_EPOCHS, lr=1e-3))[:20]
    with pytest.raises(ValueError, match="burda spans 3,280 epochs .* --epochs 3281 has no rate"):
        check_schedule(_train("burda", epochs=3281))
    assert SCHEDULES["burda"].epochs == BURDA_EPOCHS  # the command line's default --epochs


def test_step_multiplies_by_gamma_every_n_epochs():
    cfg = _train("step", epochs=10, lr=0.1, every=3, gamma=0.5)
    assert _rates(cfg) == [0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125]


def test_cosine_falls_from_lr_towards_the_floor_over_the_planned_epochs():
    lr, floor, epochs = 0.1, 0.01, 8
    rates = _rates(_train("cosine", epochs=epochs, lr=lr, floor=floor))
    assert rates[0] == lr
    assert rates[epochs // 2] == pytest.approx((lr + floor) / 2, rel=1e-12)  # cos(π/2) = 0
    for e in range(1, epochs):  # cos(π e/E) = -cos(π (E-e)/E): symmetric about the midpoint
        assert rates[e] == pytest.approx(
            floor + (lr - floor) * (1 + math.cos(math.pi * e / epochs)) / 2, rel=1e-12)
        assert rates[e] + rates[epochs - e] == pytest.approx(lr + floor, rel=1e-12)
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > floor


def test_plateau_lowers_the_rate_after_patience_validations_without_a_better_elbo():
    # patience 2: a reduction once two validations in a row fail to beat the best (a tie is
    # no improvement); the count restarts, the best is kept; an epoch not validated is skipped.
    vals = [-30.0, -29.0, -29.5, -29.2, -28.0, -28.5, None, -28.1, -27.0, -27.5, -27.0]
    cfg = _train("plateau", epochs=12, lr=0.1, patience=2, factor=0.5)
    assert _rates(cfg, vals) == [0.1] * 4 + [0.05] * 4 + [0.025] * 3 + [0.0125]


@pytest.mark.parametrize("options, match", [
    ({"lr_shedule": {}}, "options: unknown kind 'lr_shedule'; TrainConfig.options holds "
                         "lr_schedule"),
    ({"lr_schedule": {"stp": {}}}, "unknown lr schedule 'stp'; valid lr schedule names"),
    ({"lr_schedule": {"step": {"evry": 3}}}, r"lr schedule 'step' options: unknown config keys "
                                             r"\['evry'\]"),
    ({"lr_schedule": {"step": {"every": "3"}}}, r"options\.every: expected int, got '3'"),
    ({"lr_schedule": {"step": {"every": 0}}}, "every .* must be at least 1, got 0"),
])
def test_settings_given_in_python_are_checked_as_the_flags_are(options, match):
    with pytest.raises(ValueError, match=match):
        check_train_config(TrainConfig(lr_schedule="step", options=options))


# --- fits: every schedule resumed exactly --------------------------------------------------

CASES = {  # options under which each schedule changes the rate after the resume point
    "constant": {},
    "burda": {},                                  # stages begin at epochs 2, 5 and 14
    "step": {"every": 4, "gamma": 0.5},           # at 5, 9 and 13
    "cosine": {"floor": 1e-3},                    # every epoch
    "plateau": {"patience": 2, "factor": 0.5},    # where the validation ELBO stalls
}
EPOCHS, RESUME_AT = 16, 11
STEPS = 6  # 1,438 training digits in batches of 256


def _run_config(name: str, epochs: int = EPOCHS) -> RunConfig:
    return RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(16,)), data=DataConfig(),
                     train=_train(name, epochs, 0.1, **CASES[name]), image_shape=(8, 8))


def _changes_after_resume_point(name: str, reference) -> None:
    """A test that cannot fail is no test: the rate must move in the resumed part."""
    rates = [row[-1] for row in reference[0]]  # an epoch's row ends with its rate
    if name == "constant":
        assert rates == [0.1] * EPOCHS
    else:
        assert len(set(rates[RESUME_AT - 1:])) > 1, f"{name}: the rate never changes after " \
            f"epoch {RESUME_AT} ({rates}); choose settings under which it does"


@pytest.mark.parametrize("name", list(CASES))
def test_a_fit_interrupted_mid_epoch_resumes_to_the_uninterrupted_fit(name, tmp_path):
    cfg = _run_config(name)
    reference = reference_fit(cfg)
    _changes_after_resume_point(name, reference)
    polls = iter(range(10 ** 6))
    stop_at = RESUME_AT * STEPS + 3  # step 4 of epoch 12
    first = train_run(cfg, tmp_path, "r", progress=False, stop=lambda: next(polls) == stop_at)
    assert first.fit.interrupted and (first.fit.state.epoch, first.fit.state.step) == (RESUME_AT, 3)
    resume_run(tmp_path / "r", progress=False)
    same_result(tmp_path / "r", reference)


@pytest.mark.parametrize("name", [n for n in CASES if n != "cosine"])
def test_a_fit_resumed_to_more_epochs_is_the_longer_fit(name, tmp_path):
    """Fit 11 epochs, then resume to 16: the plateau's best value, bad epochs and factor
    come back from the history in the checkpoint."""
    cfg = _run_config(name)
    reference = reference_fit(cfg)
    train_run(_run_config(name, RESUME_AT), tmp_path, "r", progress=False)
    resume_run(tmp_path / "r", EPOCHS, progress=False)
    same_result(tmp_path / "r", reference)


def test_cosine_resumed_to_more_epochs_follows_the_curve_over_the_new_total(tmp_path):
    """Documented: the cosine's shape is set by the planned epochs, so the rest of a run
    resumed to a new total follows the new curve from where it stands."""
    train_run(_run_config("cosine", RESUME_AT), tmp_path, "r", progress=False)
    rates = [r.lr for r in resume_run(tmp_path / "r", EPOCHS, progress=False).fit.history]
    lr, floor = 0.1, CASES["cosine"]["floor"]

    def curve(e: int, total: int) -> float:
        return floor + (lr - floor) * (1 + math.cos(math.pi * e / total)) / 2

    assert rates == pytest.approx([curve(e, RESUME_AT) for e in range(RESUME_AT)] +
                                  [curve(e, EPOCHS) for e in range(RESUME_AT, EPOCHS)], rel=1e-12)


def test_a_resume_with_another_lr_applies_the_schedule_to_it(tmp_path):
    cfg = dataclasses.replace(_run_config("step"), train=_train("step", 6, every=2, gamma=0.5))
    train_run(cfg, tmp_path, "r", progress=False)
    result = resume_run(tmp_path / "r", 10, changes={"lr": 0.02}, progress=False)
    assert [r.lr for r in result.fit.history] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025,
                                                  0.02 * 0.125, 0.02 * 0.125,
                                                  0.02 * 0.0625, 0.02 * 0.0625]
    lines = (tmp_path / "r" / METRICS).read_text().splitlines()
    assert [json.loads(line)["lr"] for line in lines] == [r.lr for r in result.fit.history]


def test_the_constant_schedule_is_the_fit_without_schedules(monkeypatch):
    """Setting the base rate at every epoch changes nothing: the same records and
    parameters as a fit whose rate is never touched after Adam is built."""
    data = load_run_data(_run_config("constant"))
    cfg = TrainConfig(epochs=3, batch_size=256, device="cpu")

    def run():
        model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(16,)), data.data_dim,
                                 seed=0)
        result = fit(model, guide, data, cfg, progress=False)
        return result, [p.detach().clone() for p in result.optimizer.param_groups[0]["params"]]

    scheduled, params = run()
    monkeypatch.setattr(importlib.import_module("pyro_vae.infer.loop"), "set_learning_rate",
                        lambda optimizer, rate: None)
    untouched, untouched_params = run()
    assert [r.lr for r in scheduled.history] == [cfg.lr] * 3
    strip = lambda r: dataclasses.replace(r, seconds=0.0, images_per_second=0.0)  # noqa: E731
    assert [strip(r) for r in scheduled.history] == [strip(r) for r in untouched.history]
    assert all(torch.equal(a, b) for a, b in zip(params, untouched_params, strict=True))
