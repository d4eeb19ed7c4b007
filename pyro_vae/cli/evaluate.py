"""``pyro-vae evaluate RUN``: log p(x) of a split three ways (prior Monte Carlo, ELBO, IWAE),
with PSIS diagnostics of the guide; writes ``evaluation.json`` and two figures into the run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pyro_vae.cli.common import COMMANDS, Command, UserError, positive_int
from pyro_vae.evaluate import ESTIMATORS, Evaluation, evaluate
from pyro_vae.figures import plot_k_curve, plot_khat
from pyro_vae.runs import load_run
from pyro_vae.traces import slice_rows

SPLITS = ("test", "val", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    p.add_argument("--split", choices=SPLITS, default="test", help="which images to score")
    p.add_argument("--samples", type=positive_int, default=5000,
                   help="K, draws of z per image (from the guide, and again from the prior)")
    p.add_argument("--points", type=positive_int, default=None,
                   help="score only the first N images of the split (None: all of them)")
    p.add_argument("--particle-chunk", type=positive_int, default=None,
                   help="draws per program call (None: 512 on CPU, 1024 on GPU); memory grows "
                        "with the chunk sizes, not with N")
    p.add_argument("--point-chunk", type=positive_int, default=None,
                   help="images per program call (None: 8 on CPU, 256 on GPU)")
    p.add_argument("--hold-points", type=positive_int, default=256,
                   help="images whose K weights are held in memory at once")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def report(result: Evaluation, path: Path) -> None:
    """Print each estimate in nats and bits/dim, and the PSIS verdict, to stderr."""
    print(f"{result.num_points} images, K = {result.num_samples}, {result.seconds:.1f} s", file=sys.stderr)
    for name in ESTIMATORS:
        e = getattr(result, name)
        print(f"  {name:9s} log p(x) = {e.mean:10.3f} ± {e.stderr:.3f} nats  "
              f"= {e.bits_per_dim:.4f} ± {e.bits_per_dim_stderr:.4f} bits/dim", file=sys.stderr)
    s = result.psis.summary()
    print(f"  PSIS k̂: median {s['khat_median']:.3f}, {100 * s['fraction_khat_above']:.1f}% of images "
          f"above {s['khat_threshold']}; mean ESS/K {s['ess_fraction_mean']:.3f}", file=sys.stderr)
    print(path)


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.run, args.device)
    x = loaded.data.eval_split(args.split, seed=args.seed)
    batch = getattr(loaded.data, args.split).fields()
    if args.points is not None:
        if args.points > len(x):
            raise UserError(f"--points {args.points}: the {args.split} split has only {len(x)} images")
        x, batch = x[:args.points], slice_rows(batch, 0, args.points)
    result = evaluate(loaded.model, loaded.guide, x, num_samples=args.samples,
                      particle_chunk=args.particle_chunk, point_chunk=args.point_chunk,
                      hold_points=args.hold_points, batch=batch,
                      seed=args.seed, progress=not args.no_progress)
    summary = {"split": args.split, "seed": args.seed, **result.summary()}
    out = loaded.path / "evaluation.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    plot_k_curve(result.curve, loaded.path / "evaluation_k_curve.png")
    plot_khat(result.psis, loaded.path / "evaluation_khat.png")
    report(result, out)
    return 0


COMMANDS.register("evaluate")(Command("estimate log p(x) of a split (prior Monte Carlo, ELBO, IWAE) "
                                      "with PSIS diagnostics; writes evaluation.json and figures",
                                      add_arguments, run))
