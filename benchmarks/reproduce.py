"""The published numbers a VAE user checks first, each recipe run as written, on the full
MNIST test set: one resumable command, one table.

    python benchmarks/reproduce.py --list                       # the rows and their recipes
    python benchmarks/reproduce.py burda-vae                    # train (or resume), score, table
    python benchmarks/reproduce.py burda-vae --minutes 60       # an hour of training, then stop
    python benchmarks/reproduce.py --table                      # the table of what is done
    python benchmarks/reproduce.py burda-vae --device cuda      # the same on a GPU

Each row is a run folder ``--out/<row>`` that resumes where it stopped, however often it
is stopped (Ctrl-C, ``--minutes``, a kill: the last finished epoch's checkpoint stands).
Scoring starts when a row has trained all its epochs (or at once with ``--score-now``, at
the epochs done, marked as such): IWAE with K = ``--samples`` (5,000) on all 10,000 test
images, AIS (T = ``--steps``, 1,000) on the first ``--ais-points`` (1,000) with the BDMC gap
on ``--bdmc`` images simulated from the model, and the share of images whose PSIS k̂ > 0.7.
Every image is scored on one binarization drawn with ``--seed`` (0): the test images are
Bernoulli draws of the grey levels, the same draw for every row. Each score is cached in
``<row>/reproduce.json`` under its settings and epoch count, so a rerun does only what is
missing. Without MNIST under ``--data-root`` it says so and exits 0.

The verdict compares our IWAE-5000 estimate of −log p(x) with the paper's figure: within
two standard errors, or better, is *reproduced*; a finished row above that is *short by X*;
a row still training is *not yet*.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyro_vae import (
    CHECKPOINT,
    METRICS,
    CheckpointError,
    DataConfig,
    ModelConfig,
    Registry,
    RunConfig,
    TrainConfig,
    resume_run,
    train_run,
)
from pyro_vae.cli import main as cli_main
from pyro_vae.runs import stop_on_signals

REPO = Path(__file__).resolve().parents[1]
CACHE = "reproduce.json"
ROWS: Registry = Registry("reproduction row")


@dataclass(frozen=True)
class Recipe:
    """One published number and the recipe that produced it."""

    published: float
    """The paper's test −log p(x) in nats (lower is better)."""
    source: str
    """Who published it, and where in the paper."""
    config: Callable[[argparse.Namespace], RunConfig]
    """The run's settings, as the paper states them."""
    differs: str = ""
    """What this recipe does not do as the paper did, if anything."""
    ais_start: str = "guide"
    """Where AIS anneals from (the prior for guides whose density at a moving point is costly)."""


def _burda(args: argparse.Namespace, *, objective: str = "elbo-auto", particles: int = 1,
           prior: str = "normal", guide: str = "diagonal") -> RunConfig:
    """Burda et al. (2016), section 5: 784-200-200-50 tanh MLPs (two deterministic layers in
    encoder and decoder), Bernoulli likelihood, dynamic binarization, batch 20, Adam with
    ε = 1e-4 and 3^i passes at 1e-3·10^(−i/7), i = 0…7 (3,280 epochs). They trained on the
    60,000 training images; here 59,000, with 1,000 held out for the validation ELBO. The
    objective is Pyro's Trace_ELBO (``elbo-auto``: traced, then the whole step compiled) or
    the IWAE bound with the whole step compiled (``iwae-compile``)."""
    return RunConfig(
        model=ModelConfig(latent_dim=50, hidden_sizes=(200, 200), activation="tanh",
                          likelihood="bernoulli", prior=prior, guide=guide),
        data=DataConfig(name="mnist", root=str(args.data_root), binarize="dynamic",
                        val_fraction=1000 / 60000),
        train=TrainConfig(epochs=3280, batch_size=20, lr=1e-3, lr_schedule="burda",
                          adam_eps=1e-4, objective=objective, particles=particles,
                          seed=args.seed, device=args.device))


def _burda_code(args: argparse.Namespace) -> RunConfig:
    """``burda-vae`` with two settings of Burda et al.'s public code (yburda/iwae, read
    2026-12-07) that the paper's text does not give: its Adam's β1 of 0.99 (``optimizers.py``'s
    default, where this engine's and torch's is 0.9) and Glorot-uniform weights with zero
    biases (``nnet.py``), in place of torch's default layers."""
    cfg = _burda(args)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, adam_betas=(0.99, 0.999), init="glorot"))


def _burda_warmup(args: argparse.Namespace) -> RunConfig:
    """``burda-vae`` with a linear KL warm-up over its first 100 epochs (Sønderby et al. 2016;
    the length is Tomczak & Welling's, as in ``vampprior``, fixed before any run): the
    latent's weight rises from 0 to 1 while the decoder learns to use z, against the
    inactive units that keep a plain VAE's bound short. The validation ELBO is at weight 1
    throughout, so it reads beside ``burda-vae``'s at every epoch."""
    cfg = _burda(args)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, kl_warmup=100))


def _vamp(args: argparse.Namespace) -> RunConfig:
    """Tomczak & Welling (2018): 784-300-300-40 MLPs of gated layers (their GatedDense,
    h ⊙ sigmoid(g)), VampPrior with K = 500 pseudo-inputs,
    Bernoulli likelihood, dynamic binarization, batch 100, Adam lr 5e-4, a linear KL warm-up
    over 100 epochs, up to 2,000 epochs with early stopping after 50 without a better
    validation ELBO."""
    cfg = RunConfig(
        model=ModelConfig(latent_dim=40, hidden_sizes=(300, 300), encoder="gated",
                          decoder="gated", likelihood="bernoulli", prior="vamp",
                          guide="diagonal", options={"prior": {"vamp": {"components": 500}}}),
        data=DataConfig(name="mnist", root=str(args.data_root), binarize="dynamic"),
        train=TrainConfig(epochs=2000, batch_size=100, lr=5e-4, kl_warmup=100,
                          early_stopping=50, seed=args.seed, device=args.device))
    return cfg


ROWS.register("burda-vae")(Recipe(
    86.76, "Burda et al. 2016, Table 1: VAE, 1 stochastic layer, k = 1", _burda))
ROWS.register("burda-iwae-5")(Recipe(
    85.54, "Burda et al. 2016, Table 1: IWAE, 1 stochastic layer, k = 5",
    lambda a: _burda(a, objective="iwae-compile", particles=5)))
ROWS.register("burda-iwae-50")(Recipe(
    84.78, "Burda et al. 2016, Table 1: IWAE, 1 stochastic layer, k = 50",
    lambda a: _burda(a, objective="iwae-compile", particles=50)))
ROWS.register("burda-vae-code")(Recipe(
    86.76, "Burda et al. 2016, Table 1: VAE, k = 1, with two settings of the authors' code",
    _burda_code,
    differs="an extra row: Adam β1 0.99 and Glorot-uniform layers as in the authors' public "
            "code; not matched: its decoder's output bias at the training mean's logits, Adam's "
            "second moments starting at 1, unshuffled minibatches, σ = exp(·), 59,600 "
            "training images"))
ROWS.register("burda-vae-warmup")(Recipe(
    86.76, "Burda et al. 2016, Table 1: VAE, k = 1 (the same model, with a KL warm-up)",
    _burda_warmup,
    differs="an extra row: the KL term's weight rises linearly from 0 to 1 over the first "
            "100 epochs, which the paper's recipe does not do"))
ROWS.register("vampprior")(Recipe(
    85.57, "Tomczak & Welling 2018, Table 2: VampPrior, 1 stochastic layer (MLP)", _vamp,
    differs="torch's default initialisation where the authors' code has He's; q(z | x)'s σ = "
            "softplus + 1e-3 where theirs clips the log-variance to [-6, 2]; pseudo-inputs "
            "sigmoid(u) where theirs are learned values clipped to [0, 1]"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="*", help="rows to train and score (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--table", action="store_true", help="print the table of what is done")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "reproduce")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this many minutes (resume later)")
    p.add_argument("--train-only", action="store_true", help="train (or resume), score nothing")
    p.add_argument("--score-now", action="store_true",
                   help="score at the epochs done, before the recipe's last (marked so)")
    p.add_argument("--samples", type=int, default=5000, help="K of the IWAE estimate")
    p.add_argument("--points", type=int, default=10_000, help="test images for IWAE (all)")
    p.add_argument("--steps", type=int, default=1000, help="AIS intermediate distributions T")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per image C")
    p.add_argument("--ais-points", type=int, default=1000, help="test images for AIS")
    p.add_argument("--bdmc", type=int, default=100, help="simulated images for BDMC (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit and of the scoring")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1, as the other MNIST scripts and as burda-vae ran)")
    return p.parse_args(argv)


def check_rows(args: argparse.Namespace) -> None:
    """An unknown row is refused in one line, before anything runs (exit 2)."""
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        print(f"reproduce.py: error: unknown row {unknown[0]!r}; the rows are "
              f"{', '.join(ROWS)} (--list describes them)", file=sys.stderr)
        raise SystemExit(2)


def done_epochs(path: Path) -> tuple[int, float]:
    """Epochs the run's metrics record and their summed training seconds ((0, 0) before any)."""
    if not (path / CHECKPOINT).exists():
        return 0, 0.0
    records = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]
    return len(records), sum(r["seconds"] for r in records)


def finished(path: Path) -> bool:
    """Whether the row trained all its epochs, or stopped early by its own rule."""
    summary = path / "summary.json"
    if not summary.exists():
        return False
    s = json.loads(summary.read_text())
    planned = json.loads((path / "config.json").read_text())["train"]["epochs"]
    return not s.get("interrupted") and (s.get("stopped_early") or s["epochs"] >= planned)


UNCOMPARED = {("data", "root"), ("train", "device")}
"""Settings a row's folder may hold otherwise than its recipe: where the data is, and the
device it resumes on. Settings the recipe leaves at ``auto`` are resolved when it starts."""


def recipe_changes(path: Path, cfg: RunConfig) -> list[str]:
    """Where the row folder's ``config.json`` differs from the row's recipe now, as
    ``part.setting 'theirs' (the recipe: 'ours')``: a folder trained under an older recipe."""
    saved = json.loads((path / "config.json").read_text())
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as saved
    out = []
    for part in ("model", "data", "train"):
        for key, value in now[part].items():
            old = saved.get(part, {}).get(key, value)
            if old != value and value != "auto" and (part, key) not in UNCOMPARED:
                out.append(f"{part}.{key} {old!r} (the recipe: {value!r})")
    return out


def train(args: argparse.Namespace, name: str, signalled: Callable[[], bool] = lambda: False
          ) -> Path:
    """``--out/name`` trained towards its recipe's epochs, for at most ``--minutes`` or
    until ``signalled()`` (the fit stops at a step, checkpointed)."""
    path, cfg = args.out / name, ROWS[name].config(args)
    from carry import restore_path  # a new session's clone: the row's carried checkpoint

    if (line := restore_path(path)) is not None:
        print(f"[{name}] {line}", file=sys.stderr, flush=True)
    deadline = math.inf if args.minutes is None else time.monotonic() + 60 * args.minutes
    stop = lambda: signalled() or time.monotonic() > deadline  # noqa: E731
    if (path / "config.json").exists() and (changes := recipe_changes(path, cfg)):
        print(f"reproduce.py: [{name}] {path} was trained under another recipe "
              f"({'; '.join(changes)}): move it aside to train the row anew (nothing was "
              "changed)", file=sys.stderr)
        raise SystemExit(2)
    done, _ = done_epochs(path)
    if finished(path):
        return path
    if done == 0 and not path.exists():
        print(f"[{name}] training {cfg.train.epochs} epochs", file=sys.stderr, flush=True)
        train_run(cfg, args.out, name, stop=stop)
    else:
        print(f"[{name}] resuming at epoch {done} of {cfg.train.epochs}", file=sys.stderr, flush=True)
        try:
            resume_run(path, cfg.train.epochs, changes={"device": args.device}, stop=stop)
        except CheckpointError as err:  # e.g. records carried without their weights
            print(f"reproduce.py: [{name}] cannot resume: {str(err).splitlines()[0]}",
                  file=sys.stderr)
            raise SystemExit(2) from None
    return path


def score(args: argparse.Namespace, name: str, path: Path) -> dict:
    """IWAE on the test images, AIS on the first of them, BDMC on simulated ones, each by
    ``pyro-vae evaluate`` (which keeps every finished chunk, so an interrupted score resumes
    where it stopped), then cached here under its settings and the epoch count it scored."""
    cache_file = path / CACHE
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    epochs, _ = done_epochs(path)
    common = ["evaluate", str(path), "--split", "test", "--samples", str(args.samples),
              "--seed", str(args.seed), "--device", args.device]
    ais = ["--method", "ais", "--steps", str(args.steps), "--chains", str(args.chains),
           "--ais-start", ROWS[name].ais_start]
    jobs = {f"iwae/{epochs}/{args.points}/{args.samples}/{args.seed}":
            ("iwae", [*common, "--points", str(args.points)]),
            f"ais/{epochs}/{args.ais_points}/{args.steps}-{args.chains}/{args.seed}":
            ("ais", [*common, "--points", str(args.ais_points), *ais])}
    if args.bdmc:
        jobs[f"bdmc/{epochs}/{args.bdmc}/{args.steps}-{args.chains}/{args.seed}"] = (
            "bdmc", [*common, "--points", str(args.ais_points), *ais, "--bdmc", str(args.bdmc)])
    for key, (method, argv) in jobs.items():
        if key in cache:
            continue
        print(f"[{name}] scoring: pyro-vae {' '.join(argv)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        if cli_main(argv) != 0:
            raise SystemExit(f"[{name}] pyro-vae evaluate failed; rerun to resume it")
        doc = json.loads((path / "evaluation.json").read_text())
        cache[key] = {**doc["entries"][doc["latest"][method]],
                      "seconds": time.perf_counter() - started}
        cache_file.write_text(json.dumps(cache, indent=2) + "\n")
    return cache


def latest(cache: dict, kind: str, points: int) -> tuple[int, dict] | None:
    """The most trained ``kind`` score on ``points`` images: (epochs, result)."""
    found = [(int(k.split("/")[1]), v) for k, v in cache.items()
             if k.startswith(kind + "/") and int(k.split("/")[2]) == points]
    return max(found, key=lambda f: f[0], default=None)


def verdict(ours: float | None, se: float, published: float, complete: bool) -> str:
    if ours is None:
        return "not yet (unscored)"
    if ours <= published + 2 * se:
        return "reproduced" if complete else "reproduced (before its last epoch)"
    return f"short by {ours - published:.2f}" if complete else "not yet"


def row_line(args: argparse.Namespace, name: str) -> str:
    """One row of the table, from the run folder and its cached scores."""
    recipe, path = ROWS[name], args.out / name
    planned = recipe.config(args).train.epochs
    epochs, train_s = done_epochs(path)
    cache = json.loads((path / CACHE).read_text()) if (path / CACHE).exists() else {}
    iwae, a = latest(cache, "iwae", args.points), latest(cache, "ais", args.ais_points)
    b = latest(cache, "bdmc", args.bdmc)
    ours = se = None
    cells = ["—"] * 4
    if iwae is not None:
        est = iwae[1]["estimates"]["iwae"]
        ours, se = -est["mean"], est["stderr"]
        cells[0] = f"{ours:.2f} ± {se:.2f} (at {iwae[0]} ep.)"
        cells[1] = f"{100 * iwae[1]['psis']['fraction_khat_above']:.1f}%"
    if a is not None:
        cells[2] = f"{-a[1]['estimate']['mean']:.2f} ± {a[1]['estimate']['stderr']:.2f}"
    if b is not None:
        cells[3] = f"{b[1]['gap_mean']:.2f}"
    diff = "—" if ours is None else f"{ours - recipe.published:+.2f}"
    wall = train_s + sum(v.get("seconds", 0.0) for v in cache.values())
    return (f"| `{name}` | {cells[0]} | {recipe.published:.2f} | {diff} | {cells[1]} | {cells[2]} "
            f"| {cells[3]} | {epochs} / {planned} | {wall / 3600:.2f} h | "
            f"{verdict(ours, se or 0.0, recipe.published, finished(path))} |")


def print_table(args: argparse.Namespace, names: list[str]) -> None:
    print(f"\nMNIST test −log p(x), nats: IWAE K = {args.samples} on {args.points} test images "
          f"(one binarization, seed {args.seed}); AIS T = {args.steps}, C = {args.chains} on the "
          f"first {args.ais_points}; BDMC gap on {args.bdmc} simulated images\n")
    print("| row | ours (IWAE) | published | diff | k̂ > 0.7 | AIS | BDMC gap | epochs | "
          "wall | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(row_line(args, name))
    print()
    for name in names:
        recipe = ROWS[name]
        print(f"- `{name}`: {recipe.source}" + (f"; differs: {recipe.differs}" if recipe.differs else ""))
        print(f"  command: python benchmarks/reproduce.py {name}"
              + (f" --device {args.device}" if args.device != "cpu" else ""))


def list_rows(args: argparse.Namespace) -> None:
    for name, recipe in ROWS.items():
        cfg = recipe.config(args)
        t, m = cfg.train, cfg.model
        print(f"{name}: {recipe.published} nats ({recipe.source})\n"
              f"    {m.prior} prior, {m.guide} guide, hidden {m.hidden_sizes} "
              + (f"{m.activation}, " if (m.encoder, m.decoder) == ("mlp", "mlp")
                 else f"({m.encoder} encoder, {m.decoder} decoder), ")
              + f"z {m.latent_dim}; {t.objective} (particles {t.particles}), batch {t.batch_size}, "
              f"lr {t.lr} ({t.lr_schedule}), Adam ε {t.adam_eps}"
              + (f" β {t.adam_betas}" if t.adam_betas != TrainConfig.adam_betas else "")
              + (f", init {t.init}" if t.init != TrainConfig.init else "")
              + f", {t.epochs} epochs"
              + (f", KL warm-up {t.kl_warmup}" if t.kl_warmup else "")
              + (f", early stopping {t.early_stopping}" if t.early_stopping else "")
              + (f"\n    differs: {recipe.differs}" if recipe.differs else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_rows(args)
    if args.list:
        list_rows(args)
        return 0
    # Here, not at the top: the sibling helper imports torch, which --list does without.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conditional_mnist import mnist_ready  # the MNIST scripts' shared check (makes --out)

    if not mnist_ready(args):
        return 0
    for name in args.rows:
        with stop_on_signals() as signalled:  # Ctrl-C, kill -INT or -TERM: stop at a step
            path = train(args, name, signalled)
        if signalled():
            print(f"[{name}] interrupted; the same command resumes from its last checkpoint",
                  file=sys.stderr)
            return 130
        if not args.train_only and (finished(path) or args.score_now):
            score(args, name, path)
    shown = args.rows or [n for n in ROWS if (args.out / n).exists()]
    print_table(args, shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
