"""Grey levels under the Bernoulli and the continuous Bernoulli: the same small VAE fitted to
grey pixels with each, and what its decoder gives as "the image" on held-out images.

- ``bernoulli``: x·log λ + (1 − x)·log(1 − λ) on the grey targets themselves, no
  binarization (the binary cross-entropy, as the Pyro VAE example scores MNIST). pyro-vae
  refuses this (its support is {0, 1}), so the script scores it through a distribution of its
  own. Its integral over x ∈ [0, 1] is (2λ − 1)/logit(λ) ≤ 1, not 1: not a density.
- ``continuous-bernoulli``: the same term plus log C(λ), a density on [0, 1] (Loaiza-Ganem &
  Cunningham 2019), whose mean λ/(2λ − 1) + 1/(2 artanh(1 − 2λ)) is not λ.

For each fit, the decoder at z = E_q[z | x] on ``--points`` test images gives three readings
of each pixel: the Bernoulli's λ (its mean), the continuous Bernoulli's mean (what
pyro-vae's figures and ``sample`` show) and its λ (what one shows when λ is read as the
image). Printed per reading: the mean absolute error |reading − x| over the test pixels, the
mean signed error, the calibration error Σ_b (n_b/N)·|x̄_b − r̄_b| over 10 equal bins of the
reading (0 when, in each bin, the reading is on average the true grey level), and the mean
reading of the pixels that are exactly black.

Figure ``--out/bernoulli_bias.png``: left, the binned calibration curves (mean true grey
level against mean reading, with the identity); right, the exact curves behind them: the
Bernoulli's total mass ∫₀¹ exp ℓ(x; λ) dx and the continuous Bernoulli's mean, against λ.

``--data digits`` (default: scikit-learn's 8×8 digits, 17 grey levels, offline) or
``--data mnist`` (under ``--data-root``; skipped with a line when missing). Resumable: each
fit's test readings are kept in ``--out/<data>-<likelihood>-seed<seed>.npz`` and read back.

    python benchmarks/bernoulli_bias.py                      # digits, about a minute on 1 core
    nice -n 19 python benchmarks/bernoulli_bias.py --data mnist --epochs 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from pyro import poutine
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data import load_data
from pyro_vae.figures import save_figure
from pyro_vae.infer import fit
from pyro_vae.predictive import mean_latents, site_mean
from pyro_vae.stories import build_vae
from pyro_vae.traces import image_site, trace_program

REPO = Path(__file__).resolve().parents[1]
LIKELIHOODS = ("bernoulli", "continuous-bernoulli")
BINS = 10


class GreyCrossEntropy(dist.Bernoulli):
    """The Bernoulli's log-mass x·log λ + (1 − x)·log(1 − λ) read on grey x ∈ [0, 1]: what
    a Bernoulli likelihood does to grey pixels. Declared on [0, 1] so that pyro-vae's data
    check lets grey targets through; it is not a normalized density there."""

    support = constraints.unit_interval


class GreyBernoulli(nn.Module):
    """The ``bernoulli`` likelihood's module with grey targets allowed."""

    def forward(self, logits: Tensor) -> dist.Distribution:
        return GreyCrossEntropy(logits=logits, validate_args=False).to_event(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "bernoulli_bias",
                   help="folder of the cached readings and the figure (git-ignored by default)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs per fit (default: 300 on digits, 10 on MNIST)")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="MLP width of encoder and decoder")
    p.add_argument("--points", type=int, default=1000, help="test images read (at most)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def readings(model, guide, x: Tensor) -> dict[str, np.ndarray]:
    """The image site at z = E_q[z | x] (``x`` ``[N, D]``): its mean (as the engine shows
    it) and its λ = sigmoid(logits), each flattened to ``[N·D]``, beside x."""
    latents = mean_latents(guide, x)
    trace = trace_program(poutine.condition(model, data=latents), x)
    site = trace.nodes[image_site(trace, x)]
    lam = site["fn"].base_dist.probs
    return {"x": x.numpy().ravel(), "mean": site_mean(site).numpy().ravel(),
            "lam": lam.numpy().ravel()}


def fitted_readings(args: argparse.Namespace, likelihood: str) -> dict[str, np.ndarray]:
    """Fit the VAE with ``likelihood`` on grey pixels (no binarization) and read the test
    images; cached in ``--out/<data>-<likelihood>-seed<seed>.npz``."""
    cache = args.out / f"{args.data}-{likelihood}-seed{args.seed}.npz"
    if cache.exists():
        return dict(np.load(cache))
    data = load_data(DataConfig(name=args.data, root=str(args.data_root), binarize="none"),
                     binary_likelihood=False)
    cfg = ModelConfig(latent_dim=args.latent_dim, hidden_sizes=(args.hidden,),
                      likelihood=likelihood)
    model, guide = build_vae(cfg, data.data_dim, seed=args.seed)
    if likelihood == "bernoulli":
        model.likelihood = GreyBernoulli()
    start = time.perf_counter()
    train = TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu")
    result = fit(model, guide, data, train, progress=False)
    print(f"[{likelihood}] {args.epochs} epochs in {time.perf_counter() - start:.0f} s, "
          f"validation ELBO {result.history[-1].val_elbo:.2f}", file=sys.stderr)
    out = readings(result.model, result.guide, data.test.x[:args.points])
    np.savez(cache, **out)
    return out


def calibration(reading: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per equal-width bin of ``reading`` (non-empty bins only): its mean reading and the mean
    true grey level, and the weighted calibration error Σ_b (n_b/N)·|x̄_b − r̄_b|."""
    b = np.minimum((reading * BINS).astype(int), BINS - 1)
    n = np.bincount(b, minlength=BINS)
    keep = n > 0
    r_bar = np.bincount(b, reading, BINS)[keep] / n[keep]
    x_bar = np.bincount(b, x, BINS)[keep] / n[keep]
    return r_bar, x_bar, float((n[keep] / len(x) * np.abs(x_bar - r_bar)).sum())


def exact_curves(lam: Tensor) -> tuple[Tensor, Tensor]:
    """For λ ``[M]`` in (0, 1): the Bernoulli's total mass on [0, 1], ∫₀¹ λ^x (1 − λ)^(1−x) dx
    = (2λ − 1)/logit(λ) = 1/C(λ) (at most 1/2, at λ = 1/2), and the continuous Bernoulli's
    mean (torch's)."""
    logit = torch.logit(lam)
    mass = torch.where(logit.abs() < 1e-6, torch.full_like(lam, 0.5), (2 * lam - 1) / logit)
    return mass, torch.distributions.ContinuousBernoulli(probs=lam).mean


def figure(rows: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Calibration curves (left) and the exact curves (right); see the module docstring."""
    fig = Figure(figsize=(11, 4.8))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, (x, reading) in rows.items():
        r_bar, x_bar, error = calibration(reading, x)
        left.plot(r_bar, x_bar, marker="o", ms=4, label=f"{label} (calibration error {error:.3f})")
    left.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="identity")
    left.set_xlabel("decoder's reading of a test pixel (bin mean)")
    left.set_ylabel("true grey level (mean in the bin)")
    left.set_title("held-out pixels: reading against grey level")
    left.legend(fontsize=7, loc="lower right")
    lam = torch.linspace(1e-3, 1 - 1e-3, 999, dtype=torch.float64)
    mass, mean = exact_curves(lam)
    right.plot(lam, mass, label="Bernoulli: its total mass ∫₀¹ λ^x (1−λ)^(1−x) dx (≤ 1/2)")
    right.plot(lam, mean, label="continuous Bernoulli: E[x] (the image)")
    right.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="λ itself")
    right.set_xlabel("λ = sigmoid(decoder output)")
    right.set_title("exact: Bernoulli mass on [0, 1]; continuous Bernoulli mean")
    right.legend(fontsize=7, loc="lower center")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.data == "mnist" and not (args.data_root / "MNIST" / "raw").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; skipped")
        return 0
    args.epochs = args.epochs or (300 if args.data == "digits" else 10)
    args.out.mkdir(parents=True, exist_ok=True)
    fits = {lik: fitted_readings(args, lik) for lik in LIKELIHOODS}
    bern, cb = fits["bernoulli"], fits["continuous-bernoulli"]
    rows = {"Bernoulli (grey targets): λ = its mean": (bern["x"], bern["mean"]),
            "continuous Bernoulli: its mean E[x]": (cb["x"], cb["mean"]),
            "continuous Bernoulli: λ read as the image": (cb["x"], cb["lam"])}
    print(f"\n{args.data}, z = {args.latent_dim}, MLP {args.hidden}, {args.epochs} epochs, seed "
          f"{args.seed}; {len(fits['bernoulli']['x'])} test pixels\n")
    print("| reading | mean abs. error | mean signed error | calibration error | "
          "mean reading of black pixels (x = 0) |")
    print("|---|---|---|---|---|")
    for label, (x, reading) in rows.items():
        print(f"| {label} | {np.abs(reading - x).mean():.4f} | {(reading - x).mean():+.4f} | "
              f"{calibration(reading, x)[2]:.4f} | {reading[x == 0].mean():.4f} |")
    path = figure(rows, args.out / f"bernoulli_bias-{args.data}-seed{args.seed}.png")
    print(f"\nfigure: {path}")
    print(f"wall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
