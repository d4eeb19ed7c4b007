"""Long evaluations kept as they go: a run stopped after some chunks and continued from the
chunks on disk gives exactly the numbers of one that was never stopped (IWAE, AIS, BDMC),
whatever the process's random state in between; the chunk files are never unpickled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_vae.evaluation.annealing import AISConfig
from pyro_vae.evaluation.bounds import ais_curve, bdmc
from pyro_vae.evaluation.importance import evaluate
from pyro_vae.partial import NothingToResume, Partial, SettingsDiffer
from pyro_vae.programs import unit_seed

from support import Evil
from test_evaluate import draw, posterior_guide, ppca

SETTINGS = {"method": "test", "samples": 40}
FAST_AIS = AISConfig(steps=6, chains=3, leapfrog=2, warmup_steps=4, point_chunk=3)


class Stop(Exception):
    """Stands in for Ctrl-C or a kill between two chunks."""


def stopping_after(partial: Partial, k: int) -> Partial:
    """``partial``, made to raise :class:`Stop` once its k-th unit is written."""
    save, written = partial.save, []

    def save_then_stop(unit, arrays):
        out = save(unit, arrays)
        written.append(unit)
        if len(written) == k:
            raise Stop(unit)
        return out

    partial.save = save_then_stop
    return partial


@pytest.fixture(scope="module")
def story():
    model, lg = ppca(2)
    return model, posterior_guide(lg, shift=1.0, widen=2.0), draw(lg, 11)


def interrupted_then_resumed(tmp_path, k: int, run):
    """``run(partial)`` stopped after k chunks, the process's random state scrambled, then
    run again from the chunks on disk; returns the result and the chunks it found."""
    with pytest.raises(Stop):
        run(stopping_after(Partial.open(tmp_path / "p", SETTINGS, resume=False), k))
    torch.manual_seed(12345)  # the continued run must not depend on the process's stream
    partial = Partial.open(tmp_path / "p", SETTINGS, resume=True)
    return run(partial), partial.resumed


def test_an_interrupted_evaluate_resumes_to_exactly_the_uninterrupted_numbers(story, tmp_path):
    model, guide, x = story

    def run(partial=None):
        return evaluate(model, guide, x, num_samples=40, hold_points=4, point_chunk=3,
                        particle_chunk=16, partial=partial)

    whole = run()
    again, found = interrupted_then_resumed(tmp_path, 2, run)
    assert found == 2  # of the 3 chunks (4 + 4 + 3 points), 2 were read back
    for name in ("prior_mc", "elbo", "iwae"):
        assert torch.equal(getattr(whole, name).per_point, getattr(again, name).per_point), name
    assert torch.equal(whole.psis.khat, again.psis.khat) and torch.equal(whole.psis.ess, again.psis.ess)
    assert whole.curve == again.curve
    assert whole.summary()["estimates"] == again.summary()["estimates"]


def test_each_chunk_draws_from_its_own_seed(story):
    """The last chunk's numbers are those of its points evaluated alone under the chunk's seed."""
    model, guide, x = story
    whole = evaluate(model, guide, x, num_samples=40, hold_points=4, point_chunk=3, particle_chunk=16)
    from pyro_vae.programs import seeded

    with seeded(unit_seed(0, "iwae", 2)):
        alone = evaluate(model, guide, x[8:], num_samples=40, hold_points=4, point_chunk=3,
                         particle_chunk=16, seed=None)
    assert torch.equal(whole.iwae.per_point[8:], alone.iwae.per_point)


def test_an_interrupted_ais_resumes_to_exactly_the_uninterrupted_numbers(story, tmp_path):
    model, guide, x = story

    def run(partial=None):
        return ais_curve(model, guide, x, FAST_AIS, (2, 6), seed=3, partial=partial)

    whole = run()
    again, found = interrupted_then_resumed(tmp_path, 1, run)
    assert found == 1
    for a, b in zip(whole, again):
        assert torch.equal(a.estimate.per_point, b.estimate.per_point)
        assert torch.equal(a.chain_stderr, b.chain_stderr) and torch.equal(a.acceptance, b.acceptance)
        assert a.estimate.mean == b.estimate.mean


def test_an_interrupted_bdmc_resumes_to_exactly_the_uninterrupted_numbers(story, tmp_path):
    model, guide, x = story

    def run(partial=None):
        return bdmc(model, guide, x[:7], FAST_AIS, (2, 6), seed=1, partial=partial)

    whole = run()
    again, found = interrupted_then_resumed(tmp_path, 2, run)
    assert found == 2
    assert torch.equal(whole.data, again.data)
    for i in range(2):
        for side in ("lower", "upper"):
            a, b = getattr(whole, side)[i], getattr(again, side)[i]
            assert torch.equal(a.estimate.per_point, b.estimate.per_point)
            assert torch.equal(a.chain_stderr, b.chain_stderr)


def test_resuming_other_settings_is_refused_naming_them_and_leaves_the_files(tmp_path):
    partial = Partial.open(tmp_path / "p", SETTINGS, resume=False)
    partial.save("chunk-00000", {"a": torch.arange(3.0)})
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    with pytest.raises(SettingsDiffer) as refused:
        Partial.open(tmp_path / "p", {**SETTINGS, "samples": 80}, resume=True)
    assert refused.value.differences == {"samples": (40, 80)}
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before
    with pytest.raises(NothingToResume):
        Partial.open(tmp_path / "elsewhere", SETTINGS, resume=True)
    # Without resume, other settings start afresh, saying what differed.
    fresh = Partial.open(tmp_path / "p", {**SETTINGS, "samples": 80}, resume=False)
    assert fresh.discarded == {"samples": (40, 80)} and fresh.units() == []


def test_a_unit_file_is_never_unpickled(tmp_path):
    partial = Partial.open(tmp_path / "p", SETTINGS, resume=False)
    marker = tmp_path / "pwned"
    np.savez(partial.path("chunk-00000"), a=np.array([Evil(marker)], dtype=object))
    assert partial.load("chunk-00000") is None  # read as unfinished, so computed again
    assert not marker.exists()
