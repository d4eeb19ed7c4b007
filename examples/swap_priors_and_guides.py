"""Swap priors and guides by name, fit each combination on the same data with the
same budget, and compare them with ``pyro_vae.compare_runs``.

Each ``prior/guide/objective`` combination is trained into a run folder
(``OUT/runs/<prior>-<guide>-<objective>/``, which ``pyro-vae evaluate``, ``diagnose``,
``sample`` and ``compare`` accept) and its importance-weighted bound log p̂(x) with K draws
per image on the validation images is written beside it as ``evaluation.json``. You will see
the comparison table, one row per combination: the parts and settings that differ, the
training seconds, the final and best validation ELBO (nats per image, higher is better), the
rank, the IWAE bound ± its standard error and the share of images whose PSIS k̂ exceeds 0.7.
``OUT/val_elbo.png`` draws every combination's validation ELBO against epoch on one pair of
axes, and ``OUT/compare.html`` holds the table and that figure in one page (``compare.json``
the numbers). Every fit uses the same data split, seed, network sizes, epochs and batch size.
With a 2-D latent space it also writes ``prior_densities.png``: each fitted prior's density
drawn under the encoded test points (one draw z ~ q(z | x) per image, i.e. the aggregate
posterior). Rerunning it replaces its run folders.

    python examples/swap_priors_and_guides.py --epochs 300
    python examples/swap_priors_and_guides.py --data mnist --data-root ../shared/data \\
        --latent-dim 20 --hidden 400 --epochs 10
    pyro-vae compare swap_priors_and_guides/runs/*    # the same table again, from the folders
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    compare_runs,
    evaluate,
    load_data,
    train_run,
    with_options,
    write_comparison,
)

DEFAULT_COMBOS = ("normal/diagonal/elbo", "mixture/diagonal/elbo", "vamp/diagonal/elbo",
                  "flow/diagonal/elbo", "normal/full-rank/elbo", "normal/iaf/elbo",
                  "normal/diagonal/iwae")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--hidden", default="256,128", help="encoder widths; the decoder mirrors them")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--particles", type=int, default=5, help="K of the iwae objective")
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--flow-layers", type=int, default=2)
    p.add_argument("--combos", default=",".join(DEFAULT_COMBOS),
                   help="comma-separated prior/guide/objective triples")
    p.add_argument("--iwae-samples", type=int, default=100, help="K of the reported bound")
    p.add_argument("--iwae-points", type=int, default=1000, help="validation images it uses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("swap_priors_and_guides"))
    return p.parse_args(argv)


def fit_one(combo: str, data, args: argparse.Namespace) -> dict:
    """Build ``prior/guide/objective``, fit it into a run folder, and write the IWAE bound on
    the validation images into that folder's ``evaluation.json``."""
    prior, guide_name, objective = combo.split("/")
    hidden = tuple(int(h) for h in args.hidden.split(","))
    mcfg = with_options(ModelConfig(latent_dim=args.latent_dim, hidden_sizes=hidden, prior=prior,
                                    guide=guide_name),
                        components=args.components, flow_layers=args.flow_layers)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       device="cpu", objective=objective,
                       particles=args.particles if "iwae" in objective else 1)
    cfg = RunConfig(model=mcfg, data=DataConfig(name=args.data, root=args.data_root), train=tcfg)
    name = combo.replace("/", "-")
    if (args.out / "runs" / name / "config.json").exists():  # this example's own earlier run
        shutil.rmtree(args.out / "runs" / name)
    trained = train_run(cfg, args.out / "runs", name, progress=False)
    model, guide = trained.fit.model, trained.fit.guide  # the VAE's helpers stay reachable
    x_val = data.eval_split("val", seed=args.seed)[:args.iwae_points]
    result = evaluate(model, guide, x_val, num_samples=args.iwae_samples, seed=args.seed)
    record = {"split": "val", "seed": args.seed, **result.summary()}  # as pyro-vae evaluate writes it
    (trained.path / "evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"combo": combo, "path": trained.path, "model": model, "guide": guide,
            "seconds": trained.fit.seconds, "val_elbo": trained.fit.history[-1].val_elbo,
            "iwae": result.iwae.mean}


@torch.no_grad()
def draw_prior_densities(rows: list[dict], x_test: torch.Tensor, path: Path) -> Path:
    """One panel per prior: log p(z) on a grid, with one z ~ q(z | x) per test image."""
    ncol = min(4, len(rows))
    nrow = -(-len(rows) // ncol)
    fig = Figure(figsize=(3.2 * ncol, 3.4 * nrow))
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        z = r["guide"].z_dist(x_test).sample()
        lim = float(z.abs().quantile(0.99)) * 1.2 + 0.5
        grid = torch.linspace(-lim, lim, 120)
        zz = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1)  # [120, 120, 2]
        density = r["model"].z_dist().log_prob(zz.reshape(-1, 2)).exp().reshape(120, 120)
        # Levels from 0 up, so that regions of underflowed (zero) density are filled too.
        levels = torch.linspace(0, float(density.max()) * 1.0001 + 1e-12, 21).numpy()
        ax.contourf(grid.numpy(), grid.numpy(), density.numpy(), levels=levels, cmap="viridis",
                    extend="both")
        ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), s=2, c="white", alpha=0.4)
        ax.set_xlim(-lim, lim)  # the 1% of points beyond the grid must not widen the axes
        ax.set_ylim(-lim, lim)
        ax.set_title(r["combo"], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("p(z) (colour) against z ~ q(z | x) for the test images (white)")
    fig.savefig(path, dpi=110)
    return path


def main(args: argparse.Namespace) -> list[dict]:
    # Each run loads its own copy of the data; this one gives the images to evaluate on.
    data = load_data(DataConfig(name=args.data, root=args.data_root))
    rows = []
    for combo in args.combos.split(","):
        rows.append(fit_one(combo, data, args))
        r = rows[-1]
        print(f"  {combo}: val ELBO {r['val_elbo']:.2f}, IWAE {r['iwae']:.2f}, {r['seconds']:.1f} s",
              flush=True)
    comparison = compare_runs([r["path"] for r in rows])
    print(comparison.text())
    files = write_comparison(comparison, args.out, html_page=True)
    print(files.figure, files.html, sep="\n")
    if args.latent_dim == 2:
        x_test = data.eval_split("test", seed=args.seed)[:2000]
        print(draw_prior_densities(rows, x_test, args.out / "prior_densities.png"))
    return rows


if __name__ == "__main__":
    main(parse_args())
