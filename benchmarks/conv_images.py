"""Images as images: convolutional VAEs against the MLP on MNIST, and 8-bit likelihoods on
natural-image patches, in two tables.

``mnist`` (needs MNIST under ``--data-root``; says so and skips otherwise): the 784-400
MLP VAE, the conv VAE (``--encoder conv --decoder conv``, default widths 32,64 / 64,32,
linear layers of 256) and two narrower ones (16,32 / 32,16 and 8,16 / 16,8, linear layers
of 128), the same latent size, Bernoulli likelihood, dynamic binarization, batch 128,
seed 0, ``--epochs`` epochs each. Row: the test IWAE bound on ``--points`` test images with
K = ``--samples`` (one fixed binarization), and the mean seconds per training epoch.

``patches`` (offline: 32×32 RGB patches of scikit-learn's sample photographs): test
bits/dim of

- ``per-pixel logistic``: an independent discretized logistic per pixel and channel, no
  latent (location and scale fitted by Adam, full batch, to the training patches); its
  log p(x) is exact;
- ``conv VAE, discretized-logistic``: its IWAE bound;
- ``conv VAE, Gaussian (dequantized)``: a per-pixel-σ Gaussian fitted to (k + u)/256 with
  ``--levels 256``, so its IWAE bound is a bound on the 8-bit log-probability too.

Resumable: every model lives in ``--out/<name>``; a finished fit is loaded, an interrupted
one resumed, a finished evaluation (``bench_evaluation.json``) read back.

    python benchmarks/conv_images.py --part patches
    nice -n 10 python benchmarks/conv_images.py --part mnist --epochs 10
    python benchmarks/conv_images.py --device cuda          # both, on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.functional import softplus

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import load_data
from pyro_vae.evaluation import bits_per_dim
from pyro_vae.infer import fit
from pyro_vae.models import DiscretizedLogistic, inverse_softplus
from pyro_vae.runs import METRICS, resume_run, train_run
from pyro_vae.stories import build_vae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import WARMUP_STEPS, Clock, step_subset  # noqa: E402  (the same step clock)
from conditional_mnist import epochs_done, scored  # noqa: E402  (the same resumable runs)

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("mnist", "patches", "all"), default="all")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "conv_images",
                   help="folder of the run folders (git-ignored by default)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--epochs", type=int, default=10, help="MNIST epochs per model")
    p.add_argument("--train-subset", type=int, default=0,
                   help="MNIST: train on the first N training images only (0: all)")
    p.add_argument("--patch-epochs", type=int, default=40, help="patches epochs per VAE")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--patch-latent-dim", type=int, default=64)
    p.add_argument("--points", type=int, default=1000, help="test images scored")
    p.add_argument("--samples", type=int, default=1000, help="K, importance draws per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--time-steps", type=int, default=0, metavar="N",
                   help="MNIST: also time N training steps of each chosen model (CPU and "
                        "wall time per step, 5 interleaved repeats; 0: not timed)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="fit and score only these models (e.g. to run two at once); the "
                        "table shows those that are done")
    return p.parse_args(argv)


def mnist_configs(args: argparse.Namespace) -> dict[str, RunConfig]:
    """The MNIST models: only the encoder and decoder differ."""
    data = DataConfig(name=str(subset_file(args)) if args.train_subset else "mnist",
                      root=str(args.data_root))
    train = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    mlp = ModelConfig(latent_dim=args.latent_dim, hidden_sizes=(400,))
    conv = ModelConfig(latent_dim=args.latent_dim, encoder="conv", decoder="conv")
    narrow = {f"mnist-conv-{a}-{b}": replace(conv, options={
        "encoder": {"conv": {"channels": [a, b], "features": 128}},
        "decoder": {"conv": {"channels": [b, a], "hidden": 128}}}) for a, b in ((16, 32), (8, 16))}
    models = {"mnist-mlp-784-400": mlp, "mnist-conv": conv, **narrow}
    return {name: RunConfig(model=m, data=data, train=train) for name, m in models.items()}


def subset_file(args: argparse.Namespace) -> Path:
    """The first ``--train-subset`` MNIST training images with the full official test split,
    written once as an ``.npz`` (0–255 integers, as the files hold them)."""
    import numpy as np

    path = args.out / f"mnist-first-{args.train_subset}.npz"
    if not path.exists():
        from pyro_vae.data import load_raw

        raw = load_raw(DataConfig(name="mnist", root=str(args.data_root)))
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=raw.train_x[:args.train_subset], y=raw.train_y[:args.train_subset],
                 x_test=raw.test_x, y_test=raw.test_y)
    return path


def patch_configs(args: argparse.Namespace) -> dict[str, RunConfig]:
    """The two patch VAEs: conv encoder and decoder; 8-bit likelihood, or a dequantized Gaussian."""
    train = TrainConfig(epochs=args.patch_epochs, seed=args.seed, device=args.device)
    model = ModelConfig(latent_dim=args.patch_latent_dim, encoder="conv", decoder="conv")
    levels = {"likelihood": {"gaussian-pixel": {"levels": 256}}}
    logistic = RunConfig(model=replace(model, likelihood="discretized-logistic"),
                         data=DataConfig(name="patches"), train=train)
    gaussian = RunConfig(model=replace(model, likelihood="gaussian-pixel", options=levels),
                         data=DataConfig(name="patches", binarize="dequantize"), train=train)
    return {"patches-conv-logistic": logistic, "patches-conv-gaussian": gaussian}


def chosen(configs: dict[str, RunConfig], args: argparse.Namespace) -> list[tuple[str, RunConfig]]:
    """The models ``--only`` names (all by default)."""
    return [(n, c) for n, c in configs.items() if args.only is None or n in args.only]


def fitted(cfg: RunConfig, out: Path, name: str) -> Path:
    """``out/name`` trained to ``cfg.train.epochs``: trained fresh, resumed, or left as it is."""
    path, done = out / name, epochs_done(out / name)
    if done == 0:
        print(f"[{name}] training {cfg.train.epochs} epochs", file=sys.stderr)
        train_run(cfg, out, name, progress=False)
    elif done < cfg.train.epochs or not (path / "summary.json").exists():
        print(f"[{name}] resuming at epoch {done}", file=sys.stderr)
        resume_run(path, max(cfg.train.epochs, done), progress=False)
    return path


def row(name: str, path: Path, evaluation: dict) -> dict:
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    est = evaluation["estimates"]
    return {"model": name, "epochs": len(records), "val_elbo": records[-1]["val_elbo"],
            "elbo": est["elbo"]["mean"], "iwae": est["iwae"]["mean"],
            "iwae_se": est["iwae"]["stderr"], "iwae_bpd": est["iwae"]["bits_per_dim"],
            "iwae_bpd_se": est["iwae"]["bits_per_dim_stderr"],
            "epoch_s": sum(r["seconds"] for r in records) / len(records),
            "eval_s": evaluation["seconds"]}


def step_times(args: argparse.Namespace, configs: list[tuple[str, RunConfig]],
               repeats: int = 5) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per training step of each model, ``--time-steps`` steps
    after bench_train's warm-up, the models interleaved in every repeat so that load from
    other processes hits them alike (CPU time of a 1-thread process is the stable figure on
    a shared machine)."""
    data = load_data(configs[0][1].data)
    subset = step_subset(data, 128, args.time_steps + WARMUP_STEPS + 1)
    nets = {name: build_vae(cfg.model, data.data_dim, seed=args.seed, image_shape=data.image_shape)
            for name, cfg in configs}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in nets}
    for r in range(repeats):
        for name, cfg in configs:
            clock = Clock()
            fit(*nets[name], subset, replace(cfg.train, epochs=1, seed=r), stop=clock,
                progress=False)
            times[name].append(clock.per_step())
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for name, t in times.items()}


def mnist_table(args: argparse.Namespace) -> None:
    if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; MNIST table skipped")
        return
    configs = chosen(mnist_configs(args), args)
    rows = [row(name, p, scored(args, p)) for name, cfg in configs
            for p in [fitted(cfg, args.out, name)]]
    mnist_print(args, rows)
    if args.time_steps:
        steps_print(args, step_times(args, configs))


def steps_print(args: argparse.Namespace, steps: dict[str, tuple[float, float]]) -> None:
    """The per-step table of :func:`step_times`; ratios are to the first model's CPU time."""
    first = next(iter(steps.values()))[1]
    print(f"\nper training step, batch 128, 1 process, median of 5 interleaved repeats of "
          f"{args.time_steps} steps:\n")
    print("| model | CPU ms / step | × first row | wall ms / step |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in steps.items():
        print(f"| `{name}` | {1e3 * cpu:.1f} | {cpu / first:.2f} | {1e3 * wall:.1f} |")


def mnist_print(args: argparse.Namespace, rows: list[dict]) -> None:
    """The MNIST table; ``× MLP`` is each row's time per epoch over the first row's."""
    base = rows[0]["epoch_s"]
    subset = f"first {args.train_subset} training images" if args.train_subset else "all 60,000"
    print(f"\nMNIST ({subset}), z = {args.latent_dim}, Bernoulli, dynamic binarization, batch "
          f"128, seed {args.seed}, device {args.device}; test IWAE on {args.points} test "
          f"images, K = {args.samples}\n")
    print("| model | epochs | val ELBO | test ELBO | test IWAE (± s.e.) | s / epoch | × MLP |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['model']}` | {r['epochs']} | {r['val_elbo']:.2f} | {r['elbo']:.2f} | "
              f"{r['iwae']:.2f} ± {r['iwae_se']:.2f} | {r['epoch_s']:.1f} | "
              f"{r['epoch_s'] / base:.2f} |")


def per_pixel_logistic(args: argparse.Namespace, steps: int = 300, batch: int = 1000) -> dict:
    """Exact test bits/dim of independent per-pixel discretized logistics (no latent): the
    location and scale of each pixel and channel by maximum likelihood on the training
    patches (Adam on random batches; 2 parameters per pixel, so 300 steps of 1,000 patches
    converge: the full training loss at step 250 and at the end is printed). Cached in
    ``--out/per-pixel-logistic.json``."""
    cache = args.out / "per-pixel-logistic.json"
    if cache.exists():
        return json.loads(cache.read_text())
    data = load_data(DataConfig(name="patches"), binary_likelihood=False)
    x, test = data.train.x.to(args.device), data.test.x[:args.points].to(args.device)
    loc = x.mean(0).clone().requires_grad_()
    raw = torch.full_like(loc, inverse_softplus(0.1)).requires_grad_()
    opt = torch.optim.Adam([loc, raw], lr=2e-2)
    gen = torch.Generator().manual_seed(args.seed)
    score = lambda rows: DiscretizedLogistic(loc, softplus(raw)).log_prob(rows).sum(1)  # noqa: E731
    for step in range(steps):
        rows = x[torch.randint(len(x), (batch,), generator=gen).to(x.device)]
        loss = -score(rows).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == steps - 51:
            with torch.no_grad():
                before = float(-score(x).mean())
    with torch.no_grad():
        after, per_image = float(-score(x).mean()), score(test)
    print(f"per-pixel logistic: full training loss {before:.1f} → {after:.1f} nats/image over "
          f"the last 50 of {steps} steps", file=sys.stderr)
    d = test.shape[1]
    result = {"model": "per-pixel logistic (no latent)", "iwae": float(per_image.mean()),
              "iwae_bpd": float(bits_per_dim(per_image.mean(), d)),
              "iwae_bpd_se": float(per_image.std() / math.sqrt(len(per_image)) / (d * math.log(2)))}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def patches_table(args: argparse.Namespace) -> None:
    rows = [per_pixel_logistic(args)]
    rows += [row(name, p, scored(args, p)) for name, cfg in chosen(patch_configs(args), args)
             for p in [fitted(cfg, args.out, name)]]
    print(f"\npatches (5,400 training, 1,000 test 32×32 RGB patches), conv VAEs with z = "
          f"{args.patch_latent_dim}, {args.patch_epochs} epochs, batch 128, seed {args.seed}, "
          f"device {args.device}; IWAE on {args.points} test patches, K = {args.samples}\n")
    print("| model | test log p(x) bound, nats | bits/dim (± s.e.) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['iwae']:.1f} | {r['iwae_bpd']:.3f} ± {r['iwae_bpd_se']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.part in ("patches", "all"):
        patches_table(args)
    if args.part in ("mnist", "all"):
        mnist_table(args)
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
