"""MNIST test log p(x) beside the published numbers: IWAE with K draws, AIS, and the BDMC gap.

Architecture and data as in Burda et al. (2016): 784-200-200-50 MLPs with tanh, Bernoulli
likelihood, dynamic binarization, the 10,000 official test images (one fixed binarization
for scoring). Two rows:

- ``vae``: N(0, I) prior, diagonal Gaussian guide, Trace_ELBO (published: 86.76 nats);
- ``best``: flow prior, IAF guide, IWAE objective (``--particles``), KL warm-up
  (published one-layer anchors: IWAE k=50 84.78, VampPrior 85.57, planar NF ≤ 85.1).

Each row is a run folder ``--out/<row>``; the script trains it to ``--epochs`` (resuming an
interrupted or shorter run from its checkpoint), then scores ``--points`` test images with
IWAE (K = ``--samples``) and AIS (``--steps`` T, ``--chains`` C; the vae row anneals from
its guide, the best row from the prior since an IAF's density at a moving point needs the
flow's sequential inverse), and runs BDMC on ``--bdmc`` images simulated from the model.
Every score is cached per epoch count in ``<row>/mnist_nll.json`` (``history`` keeps the
IWAE bound at every epoch count scored, for the bound-against-epochs plot), so a rerun
only does what is missing. Without MNIST under ``--data-root`` it says so and exits 0.

    nice -n 10 python benchmarks/mnist_nll.py --epochs 5                    # this CPU: a start
    python benchmarks/mnist_nll.py --device cuda --epochs 3280 --points 10000 \\
        --samples 5000 --steps 1000 --chains 16 --bdmc 100                  # the published recipe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional_mnist import mnist_ready  # noqa: E402  (a sibling benchmark's helper)

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from pyro_vae.evaluation import (  # noqa: E402
    AISConfig,
    ais,
    bdmc,
    evaluate,  # noqa: E402
)
from pyro_vae.runs import CHECKPOINT, METRICS, load_run, resume_run, train_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = "mnist_nll.json"
PUBLISHED = {"vae": "86.76 (Burda et al., VAE k=1)", "best": "84.78 (Burda et al., IWAE k=50)"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One model of the table: its parts, objective and where AIS starts."""

    prior: str
    guide: str
    objective: str
    particles: int
    kl_warmup: int
    ais_start: str


ROWS = {"vae": Row("normal", "diagonal", "elbo-jit", 1, 0, "guide"),
        "best": Row("flow", "iaf", "iwae", 5, 10, "prior")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "mnist_nll")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--epochs", type=int, default=5, help="train each row to this many epochs")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--particles", type=int, default=None, help="K of the best row's IWAE objective")
    p.add_argument("--points", type=int, default=200, help="test images scored (10000: all)")
    p.add_argument("--samples", type=int, default=5000, help="K of the IWAE estimate")
    p.add_argument("--steps", type=int, default=200, help="AIS intermediate distributions T")
    p.add_argument("--chains", type=int, default=4, help="AIS chains per image C")
    p.add_argument("--ais-points", type=int, default=None, help="images for AIS (default --points)")
    p.add_argument("--bdmc", type=int, default=10, help="simulated images for BDMC (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--train-only", action="store_true", help="train (or resume), score nothing")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, row: Row) -> RunConfig:
    particles = args.particles or row.particles
    return RunConfig(
        model=ModelConfig(latent_dim=50, hidden_sizes=(200, 200), activation="tanh",
                          likelihood="bernoulli", prior=row.prior, guide=row.guide),
        data=DataConfig(name="mnist", root=str(args.data_root), binarize="dynamic"),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          objective=row.objective, particles=particles,
                          kl_warmup=row.kl_warmup, seed=args.seed, device=args.device))


def epochs_and_seconds(path: Path) -> tuple[int, float]:
    """Epochs the run's metrics record and their summed training seconds ((0, 0) before any)."""
    if not (path / CHECKPOINT).exists():
        return 0, 0.0
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    return len(records), sum(r["seconds"] for r in records)


def trained(args: argparse.Namespace, name: str) -> Path:
    """``--out/name`` fitted to ``--epochs``: started, resumed, or left as it is."""
    path = args.out / name
    done, _ = epochs_and_seconds(path)
    if done == 0:
        print(f"[{name}] training {args.epochs} epochs", file=sys.stderr, flush=True)
        train_run(run_config(args, ROWS[name]), args.out, name, progress=False)
    elif done < args.epochs or not (path / "summary.json").exists():
        print(f"[{name}] resuming at epoch {done}", file=sys.stderr, flush=True)
        resume_run(path, max(args.epochs, done), changes={"device": args.device}, progress=False)
    return path


def scores(args: argparse.Namespace, name: str, path: Path) -> dict:
    """IWAE, AIS and BDMC of the fitted row, each cached under its settings and epoch count."""
    cache_file = path / CACHE
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    epochs, train_s = epochs_and_seconds(path)
    run = load_run(path, args.device)
    x = run.data.eval_split("test", seed=args.seed)
    cfg = AISConfig(steps=args.steps, chains=args.chains, start=ROWS[name].ais_start)
    jobs = {
        f"iwae/{epochs}/{args.points}/{args.samples}": lambda: evaluate(
            run.model, run.guide, x[:args.points], num_samples=args.samples,
            seed=args.seed).summary(),
        f"ais/{epochs}/{args.ais_points or args.points}/{cfg.key()}": lambda: ais(
            run.model, run.guide, x[:args.ais_points or args.points], cfg, seed=args.seed).summary(),
    }
    if args.bdmc:
        jobs[f"bdmc/{epochs}/{args.bdmc}/{cfg.key()}"] = lambda: bdmc(
            run.model, run.guide, x[:args.bdmc], cfg, seed=args.seed).summary()
    for key, job in jobs.items():
        if key not in cache:
            print(f"[{name}] {key}", file=sys.stderr, flush=True)
            cache[key] = job()
            cache_file.write_text(json.dumps(cache, indent=2) + "\n")
    found = {key.split("/")[0]: cache[key] for key in jobs}
    return {"epochs": epochs, "train_s": train_s, **found,
            "history": sorted((int(k.split("/")[1]), v["estimates"]["iwae"]["mean"])
                              for k, v in cache.items() if k.startswith("iwae/"))}


def print_table(args: argparse.Namespace, table: dict[str, dict]) -> None:
    print(f"\nMNIST 784-200-200-50 tanh, Bernoulli, dynamic binarization; first {args.points} "
          f"test images; IWAE K = {args.samples}; AIS T = {args.steps}, C = {args.chains}\n")
    print("| row | epochs | train wall (s) | −IWAE (± s.e.) | −AIS (± s.e.) | k̂ > 0.7 | "
          "BDMC gap | published |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table.items():
        iwae, a = r["iwae"]["estimates"]["iwae"], r["ais"]["estimate"]
        gap = f"{r['bdmc']['gap_mean']:.2f}" if "bdmc" in r else "—"
        print(f"| `{name}` | {r['epochs']} | {r['train_s']:.0f} | {-iwae['mean']:.2f} ± "
              f"{iwae['stderr']:.2f} | {-a['mean']:.2f} ± {a['stderr']:.2f} | "
              f"{100 * r['iwae']['psis']['fraction_khat_above']:.1f}% | {gap} | {PUBLISHED[name]} |")
    for name, r in table.items():
        print(f"  {name}: −IWAE against epochs {[(e, round(-v, 2)) for e, v in r['history']]}")
        drop = per_doubling(val_curve(args.out / name))
        if drop is not None:
            print(f"  {name}: −val ELBO fell {drop:.2f} nats over the last doubling of epochs; "
                  f"3,280 epochs are {math.log2(3280 / r['epochs']):.1f} more doublings away "
                  f"(the fall per doubling shrinks, so this bounds nothing)")
    print(f"  figure: {plot_epochs(args, table)}")


def val_curve(path: Path) -> list[tuple[int, float]]:
    """(epoch, −validation ELBO) of every epoch in the run's metrics."""
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    return [(r["epoch"], -r["val_elbo"]) for r in records]


def per_doubling(curve: list[tuple[int, float]]) -> float | None:
    """How much −val ELBO fell over the last doubling of epochs (None before 2 epochs)."""
    last = curve[-1][0]
    half = [v for e, v in curve if e <= last // 2]
    return None if not half else half[-1] - curve[-1][1]


def plot_epochs(args: argparse.Namespace, table: dict[str, dict]) -> Path:
    """−val ELBO against epochs per row, the scored −IWAE and −AIS, and the published values."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, r in table.items():
        epochs, values = zip(*val_curve(args.out / name))
        line, = ax.plot(epochs, values, label=f"{name}: −val ELBO")
        ax.plot(*zip(*[(e, -v) for e, v in r["history"]]), "o", color=line.get_color(),
                label=f"{name}: −IWAE K={args.samples}")
        ax.plot([r["epochs"]], [-r["ais"]["estimate"]["mean"]], "s", color=line.get_color(),
                label=f"{name}: −AIS T={args.steps}")
        ax.axhline(float(PUBLISHED[name].split()[0]), color=line.get_color(), ls="--", lw=1,
                   label=f"published {PUBLISHED[name]}")
    ax.set_xscale("log")
    ax.set_xlabel("epochs (Burda et al.: 3,280)")
    ax.set_ylabel("nats per test image (lower is better)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path = args.out / "bound_vs_epochs.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def gpu_command(args: argparse.Namespace) -> str:
    return (f"python benchmarks/mnist_nll.py --device cuda --out {args.out} --epochs 3280 "
            f"--points 10000 --samples 5000 --steps 1000 --chains 16 --bdmc 100")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mnist_ready(args):
        return 0
    start, table = time.perf_counter(), {}
    for name in args.rows:
        path = trained(args, name)
        if not args.train_only:
            table[name] = scores(args, name, path)
        print(f"[{name}] done, {time.perf_counter() - start:.0f} s so far", file=sys.stderr)
    if table:
        print_table(args, table)
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    print(f"the published recipe (3,280 passes) on a GPU, resuming these folders:\n  {gpu_command(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
