"""AIS and BDMC against exact answers, with the figures the tests only bound.

The stories are the tests' own (tests/evaluation/test_evaluate.py's pPCA with a poor diagonal guide,
tests/evaluation/test_ais.py's bimodal mixture with an enumerated component), so what is printed
here is what the tests check, at a larger size:

- pPCA (d = 2, D = 8, 40 images): AIS − exact log p(x) (mean ± s.e. over images) against T,
  from the guide and from the prior;
- BDMC on 40 images simulated from the pPCA: lower and upper bounds, their gap and the
  exact value against T;
- the two-component mixture: exact log p(x), IWAE (K = 1000) with a unimodal guide, and AIS
  from the prior, per image.

    OMP_NUM_THREADS=1 python benchmarks/ais_exact.py
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pyro
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_ais import BimodalMixture  # noqa: E402

from pyro_vae.evaluation import AISConfig, ais, ais_curve, bdmc, log_importance_weights  # noqa: E402
from pyro_vae.traces import log_mean_exp  # noqa: E402

from test_evaluate import draw, posterior_guide, ppca  # noqa: E402

STEPS = (1, 10, 100, 500)
N = 40


def mean_se(t: torch.Tensor) -> str:
    return f"{float(t.mean()):+.4f} ± {float(t.std() / math.sqrt(t.numel())):.4f}"


def ppca_curves() -> None:
    model, lg = ppca(2)
    x = draw(lg, N)
    exact = lg.log_marginal(x).double()
    print(f"pPCA d = 2, D = 8, {N} images, exact mean log p(x) = {float(exact.mean()):.4f}; "
          f"AIS − exact (mean ± s.e. over images), 128 chains, 2 leapfrog steps")
    for start, guide in (("guide", posterior_guide(lg, shift=2.0, widen=3.0)), ("prior", None)):
        t0 = time.perf_counter()
        curve = ais_curve(model, guide, x, AISConfig(chains=128, leapfrog=2, warmup_steps=50,
                                                     start=start), STEPS, seed=0)
        cells = [f"T={r.config.steps}: {mean_se(r.estimate.per_point - exact)}" for r in curve]
        print(f"  {start:5s} start  " + "   ".join(cells) +
              f"   (acceptance {float(curve[-1].acceptance.mean()):.2f}, "
              f"{time.perf_counter() - t0:.0f} s)")


def ppca_bdmc() -> None:
    model, lg = ppca(2)
    t0 = time.perf_counter()
    result = bdmc(model, posterior_guide(lg, shift=2.0, widen=3.0), draw(lg, N),
                  AISConfig(chains=16, leapfrog=2, warmup_steps=50), STEPS, seed=2)
    exact = float(lg.log_marginal(result.data).double().mean())
    print(f"BDMC on {N} images simulated from the pPCA (guide start, 16 chains), exact mean "
          f"log p(x) = {exact:.4f}  ({time.perf_counter() - t0:.0f} s)")
    for i, t in enumerate(result.steps):
        gap = result.gap(i)
        print(f"  T={t:<4d} lower {result.lower[i].estimate.mean:.4f}  upper "
              f"{result.upper[i].estimate.mean:.4f}  gap {gap.mean:.4f} ± {gap.stderr:.4f}")


def mixture() -> None:
    story = BimodalMixture()
    x = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    exact = story.log_marginal(x)
    pyro.set_rng_seed(0)
    iwae = log_mean_exp(log_importance_weights(story, story.mode_guide, x, 1000))
    result = ais(story, None, x, AISConfig(steps=200, chains=256, start="prior", leapfrog=3,
                                           warmup_steps=50), seed=0)
    print("two-component mixture (c enumerated), per image: exact | IWAE K=1000, unimodal "
          "guide | AIS from the prior, T=200, 256 chains (± chain s.e.)")
    for i in range(len(x)):
        print(f"  x = {float(x[i]):+.1f}: {float(exact[i]):.4f} | {float(iwae[i]):.4f} | "
              f"{float(result.estimate.per_point[i]):.4f} ± {float(result.chain_stderr[i]):.4f}")


def main() -> int:
    torch.set_num_threads(1)
    start = time.perf_counter()
    ppca_curves()
    ppca_bdmc()
    mixture()
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
