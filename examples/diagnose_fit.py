"""Diagnose a fitted VAE: is its encoder, and is the Gaussian family, good enough?

Fits a small VAE to scikit-learn's digits for a few epochs (or loads a run folder
given with ``--run``), then samples the true posterior of a few held-out images by
NUTS and compares it with the amortized guide and with the best Gaussian per image.
You will see the verdicts printed (r̂, gaps in nats, active units, predictive
p-value) and find ``diagnostics.html`` (the one-page summary with its figures),
``diagnostics.json`` and ``diagnostics.nc`` (ArviZ) in the output folder.

    python examples/diagnose_fit.py --epochs 50 --out /tmp/diagnose-example
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae import (
    DataConfig,
    DiagnoseConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    diagnose,
    load_or_train,
    verdicts,
    write_diagnostics,
)


def main(args: argparse.Namespace) -> None:
    cfg = RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(64,)), data=DataConfig(name="digits"),
                    train=TrainConfig(epochs=args.epochs, device="cpu"))
    run = load_or_train(args.run, cfg, args.out, "fit")
    heldout = run.data.eval_split("test", seed=run.config.train.seed)
    result = diagnose(run.model, run.guide, heldout,
                      DiagnoseConfig(points=args.points, chains=2, warmup=args.nuts, samples=args.nuts,
                                     local_steps=200, elbo_samples=500))
    written = write_diagnostics(result, args.out, run.data.image_shape, title=str(run.path))
    for v in verdicts(result.summary()):
        print(f"{'ok   ' if v.ok else 'CHECK'}  {v.check}: {v.value}")
    print(f"summary page: {written.html}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a run folder to diagnose (default: fit one)")
    p.add_argument("--epochs", type=int, default=50, help="epochs of the fit when no --run is given")
    p.add_argument("--points", type=int, default=8, help="held-out images sampled by NUTS")
    p.add_argument("--nuts", type=int, default=150, help="NUTS warm-up and kept draws per chain")
    p.add_argument("--out", type=Path, default=Path("diagnose-example"), help="output folder")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
