"""Memory that does not grow with K: the weights reduced as they are drawn give the numbers
the whole ``[K, N]`` array gives, chunks shrink to a memory budget, a request whose one draw
does not fit is refused in one line, and the peak resident memory of ``evaluate`` is the
same at K = 1,000 and K = 20,000."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from pyro_vae.evaluation import AISConfig, ais, ais_plan, log_importance_weights
from pyro_vae.evaluation.estimates import estimates_at, psis_diagnostics
from pyro_vae.evaluation.importance import evaluate
from pyro_vae.evaluation.running import RunningWeights
from pyro_vae.memory import MemoryBudget, parse_size
from pyro_vae.programs import seeded, unit_seed

from support import run_cli, train_tiny
from test_evaluate import draw, posterior_guide, ppca


def _fed(w: torch.Tensor, ks, k_step: int, n_step: int) -> RunningWeights:
    """``w`` ``[K, N]`` fed as the evaluator feeds it: a block of rows, its draws in chunks."""
    r = RunningWeights(w.shape[1], w.shape[0], ks)
    for lo in range(0, w.shape[1], n_step):
        for k_lo in range(0, w.shape[0], k_step):
            r.add(w[k_lo:k_lo + k_step, lo:lo + n_step], lo, k_lo)
    return r


@pytest.mark.parametrize("K", [1, 2, 9, 300, 5000])
def test_running_sums_equal_the_whole_array(K):
    """Heavy and light tails, a row of equal weights and one with a −∞ weight, fed in chunks
    that do not divide K: the same estimates, K-curve, k̂ (the tail PSIS fits is the same
    tail) and ESS as from all K at once, to float64 rounding of float32 inputs."""
    gen = torch.Generator().manual_seed(K)
    w = torch.randn(K, 5, generator=gen) * torch.tensor([0.3, 1.0, 4.0, 0.0, 1.0])
    w[K // 2, 4] = -math.inf
    ks = sorted({1, max(1, K // 3), K})
    r = _fed(w, ks, 7, 3)
    whole = estimates_at(w, w, K)
    torch.testing.assert_close(r.log_mean_exp(), whole["iwae"].double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(r.mean[:4], whole["elbo"][:4].double(), rtol=0, atol=1e-5)
    lse_at, mean_at = r.curve()
    for i, k in enumerate(ks):
        at = estimates_at(w, w, k)
        torch.testing.assert_close(lse_at[i], at["iwae"].double(), rtol=0, atol=1e-5)
        torch.testing.assert_close(mean_at[i, :4], at["elbo"][:4].double(), rtol=0, atol=1e-5)
    if K > 1:
        torch.testing.assert_close(r.std()[:4], w[:, :4].double().std(0), rtol=1e-6, atol=1e-6)
        p = psis_diagnostics(w)
        khat, ess = r.psis()
        assert torch.equal(khat, p.khat)
        torch.testing.assert_close(ess, p.ess, rtol=1e-9, atol=1e-12)


def test_chunked_evaluate_equals_the_whole_array_and_the_exact_marginal():
    """pPCA, whose log p(x) is exact: ``evaluate`` in program chunks of 137 draws × 5 points
    gives per point what the whole ``[K, N]`` weights of the same draws give, and both sit
    on the closed form within their Monte Carlo error."""
    model, lg = ppca(2)
    x = draw(lg, 20)
    guide = posterior_guide(lg, shift=0.5, widen=1.5)
    K = 1000
    result = evaluate(model, guide, x, num_samples=K, particle_chunk=137, point_chunk=5,
                      hold_points=20, seed=0)
    with seeded(unit_seed(0, "iwae", 0)):
        w = log_importance_weights(model, guide, x, K, particle_chunk=137, point_chunk=5)
        v = log_importance_weights(model, None, x, K, particle_chunk=137, point_chunk=5)
    whole = estimates_at(w, v, K)
    for name in ("prior_mc", "elbo", "iwae"):
        torch.testing.assert_close(getattr(result, name).per_point, whole[name].double(),
                                   rtol=0, atol=2e-5)
    assert torch.equal(result.psis.khat, psis_diagnostics(w).khat)
    # IWAE − log p ≈ ŵ/p − 1 per point, of s.d. ≈ sd(w)/(mean w √K) (delta method): within 5.
    err = result.iwae.per_point - lg.log_marginal(x).double()
    se = (w - w.max(0).values).exp().double()
    se = se.std(0) / (se.mean(0) * math.sqrt(K))
    assert (err.abs() < 5 * se + 1e-4).all(), (err, se)


def test_a_small_budget_shrinks_the_chunks_and_states_them():
    model, lg = ppca(2)
    x = draw(lg, 6)
    guide = posterior_guide(lg)
    tight = evaluate(model, guide, x, num_samples=300, seed=0,
                     memory=MemoryBudget(parse_size("100KB"), "test"))
    m = tight.summary()["memory"]
    assert m["budget_bytes"] == 100_000 and m["working_bytes_bound"] <= 100_000
    assert m["particle_chunk"] * m["point_chunk"] < 512 * 8 and m["hold_points"] < 6
    # q = p(z | x): every weight is log p(x), however the draws were chunked
    torch.testing.assert_close(tight.iwae.per_point, lg.log_marginal(x).double(), atol=2e-4,
                               rtol=1e-5)


def test_ais_anneals_many_chains_in_groups_that_fit_the_budget():
    """C = 40 chains under a budget that fits fewer at once: the plan anneals them in groups
    (the step sizes adapted on the first), and AIS still recovers the exact pPCA marginal."""
    model, lg = ppca(2)
    x = draw(lg, 3)
    cfg = AISConfig(steps=30, chains=40, leapfrog=3, warmup_steps=10)
    guide = posterior_guide(lg, shift=1.0, widen=1.5)
    cell = ais_plan(model, guide, x, cfg, MemoryBudget(10**9, "test"))[1]["bytes_per_chain_and_image"]
    budget = MemoryBudget(15 * cell, "test")  # room for 15 chains of one image at once
    planned, m = ais_plan(model, guide, x, cfg, budget)
    assert (planned.group, planned.point_chunk) == (15, 1) and m["working_bytes_bound"] <= budget.bytes
    assert m["chains_per_call"] == planned.group and m["images_per_call"] == planned.point_chunk
    result = ais(model, guide, x, planned, seed=0)
    err = result.estimate.per_point - lg.log_marginal(x).double()
    # AIS is unbiased for p(x): log p̂ errs by about its chain s.e. (delta method over the 40
    # chains of all groups); 4 of them, and a bias of −Var/2 well below it.
    assert (err.abs() < 4 * result.chain_stderr).all(), (err, result.chain_stderr)
    assert (result.chain_stderr < 0.3).all()  # the check has teeth
    with pytest.raises(ValueError, match="one chain for one image needs about"):
        ais_plan(model, guide, x, cfg, MemoryBudget(cell - 1, "test"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("memory"), "tiny", "--latent-dim", "2")


@pytest.mark.parametrize("args, match", [
    (["--memory-budget", "2KB"], "one draw for one image needs about"),
    (["--memory-budget", "1MB", "--particle-chunk", "100000"], "--particle-chunk 100000 needs about"),
    (["--memory-budget", "2KB", "--method", "ais"], "AIS: one chain for one image needs about"),
])
def test_a_request_that_cannot_fit_is_refused_in_one_line(run, capsys, args, match):
    before = sorted(p.name for p in run.iterdir())
    code, err = run_cli(["evaluate", str(run), "--samples", "100", "--no-progress", *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_diagnose_refuses_points_whose_draws_exceed_the_budget(run, capsys):
    code, err = run_cli(["diagnose", str(run), "--points", "50", "--memory-budget", "100KB",
                         "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "NUTS draws of 50 points need about" in err


def _peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def _rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@pytest.mark.skipif(not _reset_peak(), reason="needs /proc/self/clear_refs (Linux) to reset VmHWM")
def test_peak_memory_does_not_grow_with_k(run, capsys):
    """The peak resident memory above the start of the command, at K = 1,000 and 20,000 on
    64 images under a 200 MB budget. Holding the weights as before (two [K, 64] float32
    arrays and PSIS's float64 copies, ~40 bytes per weight) would add ~49 MB at K = 20,000;
    reduced as drawn, the growth is the program chunk and the running sums (< 1 MB here)."""
    args = ["evaluate", str(run), "--points", "64", "--memory-budget", "200MB", "--no-progress"]
    assert run_cli([*args, "--samples", "50"], capsys)[0] == 0  # imports and caches, once
    growth = {}
    for k in (1000, 20000):
        _reset_peak()
        start = _rss_kib()
        code, _ = run_cli([*args, "--samples", str(k)], capsys)
        assert code == 0
        growth[k] = (_peak_kib() - start) / 1024  # MiB
        bound = json.loads((run / "evaluation.json").read_text())["memory"]["working_bytes_bound"]
        # the stated bound holds, with room for what the allocator keeps of freed memory
        assert growth[k] < bound / 2**20 + 16, (k, growth[k], bound)
    assert growth[20000] - growth[1000] < 8, growth
