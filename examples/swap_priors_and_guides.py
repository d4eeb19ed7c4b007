"""Swap priors and guides by name, fit each combination on the same data with the
same budget, and compare them.

You will see a table, one row per ``prior/guide/objective`` combination: the
validation ELBO (nats per image, higher is better), the importance-weighted
bound log p̂(x) with K draws per image on the first validation images, and the
seconds the fit took. Every fit uses the same data split, seed, network sizes,
epochs and batch size. With a 2-D latent space it also writes
``prior_densities.png``: each fitted prior's density drawn under the encoded
test points (one draw z ~ q(z | x) per image, i.e. the aggregate posterior).

    python examples/swap_priors_and_guides.py --epochs 300
    python examples/swap_priors_and_guides.py --data mnist --data-root ../shared/data \\
        --latent-dim 20 --hidden 400 --epochs 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    build_vae,
    fit,
    load_data,
    log_importance_weights,
    log_mean_exp,
    mean_elbo,
    with_options,
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


def iwae_bound(model, guide, x: torch.Tensor, k: int) -> float:
    """Mean log p̂(x) over ``x``: log (1/K Σ_k w_k) of ``pyro_vae.evaluate``'s importance weights."""
    torch.manual_seed(0)
    return float(log_mean_exp(log_importance_weights(model, guide, x, k)).mean())


def fit_one(combo: str, data, args: argparse.Namespace) -> dict:
    """Build ``prior/guide/objective``, fit it, and measure it on the validation images."""
    prior, guide_name, objective = combo.split("/")
    hidden = tuple(int(h) for h in args.hidden.split(","))
    mcfg = with_options(ModelConfig(latent_dim=args.latent_dim, hidden_sizes=hidden, prior=prior,
                                    guide=guide_name),
                        components=args.components, flow_layers=args.flow_layers)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       device="cpu", objective=objective,
                       particles=args.particles if "iwae" in objective else 1)
    result = fit(*build_vae(mcfg, data.data_dim, seed=args.seed), data, tcfg, progress=False)
    model, guide = result.model, result.guide  # the fitted Programs (the VAE's helpers reachable)
    x_val = data.eval_split("val", seed=args.seed)
    torch.manual_seed(args.seed)
    return {"combo": combo, "model": model, "guide": guide, "seconds": result.seconds,
            "val_elbo": mean_elbo(model, guide, x_val),
            "iwae": iwae_bound(model, guide, x_val[:args.iwae_points], args.iwae_samples)}


def print_table(rows: list[dict], k: int) -> None:
    print(f"{'prior/guide/objective':<26} {'val ELBO':>10} {f'IWAE K={k}':>11} {'seconds':>8}")
    for r in rows:
        print(f"{r['combo']:<26} {r['val_elbo']:>10.2f} {r['iwae']:>11.2f} {r['seconds']:>8.1f}")


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
    data = load_data(DataConfig(name=args.data, root=args.data_root))
    rows = []
    for combo in args.combos.split(","):
        rows.append(fit_one(combo, data, args))
        r = rows[-1]
        print(f"  {combo}: val ELBO {r['val_elbo']:.2f}, IWAE {r['iwae']:.2f}, {r['seconds']:.1f} s",
              flush=True)
    print_table(rows, args.iwae_samples)
    if args.latent_dim == 2:
        args.out.mkdir(parents=True, exist_ok=True)
        x_test = data.eval_split("test", seed=args.seed)[:2000]
        print(draw_prior_densities(rows, x_test, args.out / "prior_densities.png"))
    return rows


if __name__ == "__main__":
    main(parse_args())
