"""M2's protocol on MNIST (issue 22): does the semi-supervised story beat a classifier trained
on its labels alone? One resumable command, one table.

    python benchmarks/m2_protocol.py --list                          # the recipes, as pyro-vae flags
    OMP_NUM_THREADS=1 python benchmarks/m2_protocol.py --recipe labelled --minutes 60
    python benchmarks/m2_protocol.py --recipe labelled --table        # what is done so far
    python benchmarks/m2_protocol.py --recipe labelled --device cuda  # the same on a GPU

For each label count (``--labels``, default 100 600 1000 3000) and seed (``--seeds``, default
0-4; each seed draws its own balanced labels), a recipe fixed in advance is trained for
``--epochs`` (50) on MNIST: 54,000 training images (the kept labels among them), 6,000
validation images, the official 10,000 test images. Beside it, in the same folder and the same
invocation, the supervised-only baseline: the same classifier network (784-500 softplus, 10
logits) trained by cross-entropy on the same labelled rows, seen as the M2 run sees them
(binarized draws or grey levels), with the same Adam settings and batch size, for the same
epochs, an epoch being as many steps as an M2 epoch with mixed batches has (270 at batch
200), each step min(200, labels) labelled rows.

Headline: test accuracy of argmax q(y | x) at the last epoch, mean ± SD over the seeds run.
Second column: test accuracy at the epoch of best *validation* accuracy (6,000 labelled
validation images; the only selection made). Test accuracy never selects anything. The
baseline is read at the same epoch as the M2 run it stands beside. M2 counts as working
only where it beats the baseline at every label count.

Each (labels, seed) is a run folder ``--out/<recipe>/m2-<labels>-s<seed>`` that resumes
where it stopped (``--minutes``, Ctrl-C, a kill: the last checkpoint stands); the baseline's
per-epoch figures are ``baseline.json`` there (about a minute to recompute; recomputed whole
when more epochs are asked for, the same numbers for the epochs it had). The table says how
many epochs each run has done. Without MNIST under ``--data-root`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from pyro_vae import (
    CHECKPOINT,
    METRICS,
    STORIES,
    DataConfig,
    ModelConfig,
    RunConfig,
    StoryConfig,
    TrainConfig,
    load_checkpoint,
    resume_run,
    seeded,
    train_run,
)
from pyro_vae.evaluation import accuracy, scored_splits
from pyro_vae.programs import cuda_devices
from pyro_vae.runs import load_run_data, resolve_weights, stop_on_signals

REPO = Path(__file__).resolve().parents[1]
BASELINE = "baseline.json"
TRAIN_ROWS = 54_000  # MNIST's 60,000 training images less the 6,000 held out for validation
# Kingma et al. (2014), table 1: M2's test error at 100, 600, 1000 and 3000 labels, as accuracy.
KINGMA = {100: 0.8803, 600: 0.9506, 1000: 0.9640, 3000: 0.9608}
# Kingma et al. (2014), table 1: M1 + M2's test error at the same label counts, as accuracy.
KINGMA_M1M2 = {100: 0.9667, 600: 0.9741, 1000: 0.9760, 3000: 0.9782}
M1_EPOCHS = 100


@dataclass(frozen=True)
class Recipe:
    """Settings fixed before any run: what differs from the shared ones (784-500-50 softplus
    MLPs, batch 200, Adam lr 4.2e-4, α = 46, y summed by TraceEnum_ELBO)."""

    about: str
    train: Callable[[int], dict] = lambda labels: {}
    """TrainConfig changes for a label count."""
    data: dict = field(default_factory=dict)
    alpha: float = 46.0
    model: dict = field(default_factory=dict)
    """ModelConfig changes."""
    flags: str = ""
    """The same as ``pyro-vae train`` flags."""
    story: str = "m2"
    args: dict = field(default_factory=dict)
    """``--model-arg`` pairs beside α."""
    m1_epochs: int = 0
    """For ``m1m2``: the epochs of the VAE (M1) fitted first, one per seed, in
    ``--out/m1/m1-s<seed>``; 0 for a recipe without one."""
    m1_train: dict = field(default_factory=lambda: {"batch_size": 100, "lr": 1e-3})
    """M1's TrainConfig settings."""
    m1_name: str = "m1"
    """The folder under ``--out`` of this recipe's M1s: recipes whose M1 is fitted alike
    share one (``m1``), and one that fits it otherwise has its own."""
    published: dict = field(default_factory=lambda: KINGMA)
    """Kingma et al.'s accuracy for the model the recipe fits, by label count."""
    active: bool = False
    """For ``m1m2``: M2 reads only M1's active dimensions (``--model-arg keep``, measured by
    :func:`active_dims` once M1 is fitted)."""


M1M2 = Recipe("M1 + M2: a VAE (784-600-600-50 softplus, batch 100, lr 1e-3, "
              f"{M1_EPOCHS} epochs) fitted on the 54,000 training images first, then held "
              "fixed while M2 (one hidden layer of 500, z2 of 4: chosen on validation accuracy "
              "among 50, 10 and 4) is fitted on its code with a labelled batch at every "
              "2nd step and Adam lr 1e-3",
              lambda labels: {"labelled_every": 2, "lr": 1e-3},
              model={"hidden_sizes": (600, 600)}, story="m1m2", args={"z2": 4},
              m1_epochs=M1_EPOCHS, published=KINGMA_M1M2,
              flags="--model-arg m1=M1_RUN --model-arg z2=4 --hidden 600,600 "
                    "--labelled-every 2 --lr 1e-3")


def variant(base: Recipe, about: str, flags: str, args: dict | None = None, **changes
            ) -> Recipe:
    """``base`` with ``changes``, ``args`` added to its ``--model-arg`` pairs and ``flags`` to
    its flags (a later flag overrides an earlier one)."""
    return dataclasses.replace(base, about=about, flags=f"{base.flags} {flags}",
                               args=base.args | (args or {}), **changes)


RECIPES = {
    "mixed": Recipe("issue 11's recipe: labelled and unlabelled rows share shuffled batches, "
                    "dynamic binarization"),
    "pyro": Recipe("Pyro's ss_vae_M2.py where pyro-vae has the knob: a labelled batch every "
                   "N // labels steps, grey levels scored by the Bernoulli cross-entropy, "
                   "Adam betas 0.95, 0.999",
                   lambda labels: {"labelled_every": max(2, TRAIN_ROWS // labels),
                                   "adam_betas": (0.95, 0.999)},
                   {"binarize": "grey"},
                   flags="--labelled-every $((54000 / LABELS)) --binarize grey "
                         "--adam-betas 0.95,0.999"),
    "labelled": Recipe("a labelled batch of its own at every 2nd step (the labels' share of "
                       "the steps: one half), dynamic binarization",
                       lambda labels: {"labelled_every": 2}, flags="--labelled-every 2"),
    # Candidates of issue 22's item 3, each one change to `labelled` (short runs).
    "labelled-init": Recipe("`labelled` with Kingma et al.'s initialization: weights ~ N(0, "
                            "1e-3²), biases 0",
                            lambda labels: {"labelled_every": 2, "init": "normal"},
                            flags="--labelled-every 2 --init normal --init-normal-std 1e-3"),
    "labelled-grey": Recipe("`labelled` scoring grey levels by the Bernoulli cross-entropy",
                            lambda labels: {"labelled_every": 2}, {"binarize": "grey"},
                            flags="--labelled-every 2 --binarize grey"),
    "labelled-z10": Recipe("`labelled` with a z of 10 instead of 50, so that the digit must go "
                           "through y", lambda labels: {"labelled_every": 2},
                           model={"latent_dim": 10}, flags="--labelled-every 2 --latent-dim 10"),
    # Issue 22's story of our own: M2 on the code of a VAE fitted first (Kingma's M1 + M2),
    # and single changes to it, each chosen against it on validation accuracy only.
    "m1m2": M1M2,
    "m1m2-draws": variant(
        M1M2, "`m1m2` with M2's classifier fitted on draws of M1's q(z1 | x), not on its mean, "
        "as Kingma et al.'s M2 reads M1's sampled codes (the baseline likewise); validation and "
        "test read q(y | x) averaged over 8 draws", "--model-arg draws=True", args={"draws": True}),
    "m1m2-active": variant(
        M1M2, "`m1m2-draws` with M2 telling the story of M1's active dimensions only (the "
        "variance over the first 1,000 validation images of the mean of q(z1 | x) above "
        "0.01), the others left at M1's prior, as Kingma et al. select them",
        "--model-arg draws=True --model-arg keep=ACTIVE", args={"draws": True}, active=True),
    # Kingma et al. weigh a labelled row 0.1 · N / N_labelled once a pass (54 at 100 labels of
    # 54,000); a labelled batch at every 2nd step shows each labelled row about 270 times a
    # pass, so α = 0.2 gives the labels their weight.
    "m1m2-kingma-alpha": variant(
        M1M2, "`m1m2-active` with the labels weighed as Kingma et al. weigh them: α = 0.2 "
        "(their 0.1 · N / N_labelled a pass, spread over about 270 labelled visits)",
        "--model-arg draws=True --model-arg keep=ACTIVE --model-arg alpha=0.2",
        args={"draws": True}, active=True, alpha=0.2),
    # M1 has 10 active dimensions of 50 (seed 0); a KL warm-up is the known remedy for
    # inactive units (Sønderby et al. 2016). Its length, a third of M1's epochs, was fixed
    # before any run.
    "m1m2-m1-warmup": variant(
        M1M2, "`m1m2` on an M1 fitted with a linear KL warm-up over its first "
        f"{M1_EPOCHS // 3} epochs (its own M1s, in `--out/m1-warmup`)", "",
        m1_train={"batch_size": 100, "lr": 1e-3, "kl_warmup": M1_EPOCHS // 3},
        m1_name="m1-warmup"),
    # Issue 22's story of our own on pixels: the auxiliary deep generative model (Maaløe et
    # al. 2016), one change to `labelled` so that it reads beside it: the auxiliary latent.
    # Their own recipe differs further (two hidden layers of 500 ReLUs, a and z of 100,
    # Adam lr 3e-4, 100 labelled and 100 unlabelled rows a batch, 1,000 epochs).
    "adgm": Recipe("`labelled` told as the auxiliary deep generative model: an auxiliary "
                   "latent a of 50 drawn first by the guide, q(a | x), told last by the story, "
                   "p(a | x, z, y), and read by the classifier q(y | a, x) and q(z | a, y, x)",
                   lambda labels: {"labelled_every": 2}, story="adgm",
                   flags="--labelled-every 2"),
    "labelled-10": Recipe("a labelled batch at every 10th step (the labels' share: a tenth)",
                          lambda labels: {"labelled_every": 10}, flags="--labelled-every 10"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=list(RECIPES), default="labelled")
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this many minutes (checkpointed; rerun to go on)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "m2_protocol")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--table", action="store_true", help="print the table of what is done, train nothing")
    p.add_argument("--baselines-only", action="store_true",
                   help="compute the supervised baselines (about a minute each), not M2")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    return p.parse_args(argv)


def run_config(recipe: Recipe, labels: int, seed: int, epochs: int, device: str,
               root: Path, out: Path = Path("runs")) -> RunConfig:
    shared = dict(epochs=epochs, batch_size=200, lr=4.2e-4, seed=seed, device=device,
                  objective="enum")
    train = TrainConfig(**shared | recipe.train(labels))
    model = dict(latent_dim=50, hidden_sizes=(500,), activation="softplus") | recipe.model
    args = {"alpha": recipe.alpha, **recipe.args}
    if recipe.m1_epochs:
        args["m1"] = str(m1_folder(out, seed, recipe.m1_name))
    return RunConfig(model=ModelConfig(**model),
                     data=DataConfig(name="mnist", root=str(root), labels=labels, **recipe.data),
                     train=train, story=StoryConfig(model=recipe.story, guide="story", args=args))


def m1_folder(out: Path, seed: int, name: str = "m1") -> Path:
    return out / name / f"m1-s{seed}"


def m1_config(recipe: Recipe, cfg: RunConfig) -> RunConfig:
    """The VAE that an ``m1m2`` run stacks on: the run's model flags, every training image
    unlabelled, its own batch size and learning rate."""
    train = TrainConfig(epochs=recipe.m1_epochs, seed=cfg.train.seed, device=cfg.train.device,
                        **recipe.m1_train)
    return RunConfig(model=cfg.model, data=dataclasses.replace(cfg.data, labels=None),
                     train=train)


ACTIVE_ROWS, ACTIVE_VARIANCE = 1000, 0.01  # Burda et al.'s active units; Kingma's std > 0.1


def active_dims(cfg: RunConfig) -> tuple[int, ...]:
    """M1's active dimensions for an ``m1m2`` run: those where the mean of q(z1 | x) varies
    over the first ACTIVE_ROWS validation images by more than ACTIVE_VARIANCE."""
    data = load_run_data(cfg)
    builder = STORIES.lookup(cfg.story.model)
    args = resolve_weights(builder, cfg.story.args, cfg.model, restoring=False)
    story, _ = builder(cfg.model, data.data_dim, **args)
    with torch.no_grad():
        means = story.code(data.eval_split("val", seed=cfg.train.seed)[:ACTIVE_ROWS])
    return tuple(torch.nonzero(means.var(0) > ACTIVE_VARIANCE).flatten().tolist())


def with_active(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``keep`` set to M1's active dimensions (M1 must be fitted)."""
    story = dataclasses.replace(cfg.story, args=cfg.story.args | {"keep": active_dims(cfg)})
    return dataclasses.replace(cfg, story=story)


def command(recipe: Recipe) -> str:
    """The same fit as ``pyro-vae train`` flags (a later flag overrides an earlier one)."""
    return (f"pyro-vae train --model {recipe.story} --data mnist --data-root ../shared/data "
            "--labels LABELS "
            "--seed SEED --latent-dim 50 --hidden 500 --activation softplus --batch-size 200 "
            f"--lr 4.2e-4 --epochs 50 {recipe.flags}").strip()


def m1_command(recipe: Recipe) -> str:
    """``pyro-vae train`` flags for the VAE that :func:`m1_config` builds."""
    cfg = m1_config(recipe, run_config(recipe, 100, 0, 1, "cpu", Path(".")))
    m = cfg.model
    return (f"pyro-vae train --data mnist --latent-dim {m.latent_dim} --hidden "
            f"{','.join(map(str, m.hidden_sizes))} --activation {m.activation} --batch-size "
            f"{cfg.train.batch_size} --lr {cfg.train.lr:g} --epochs {cfg.train.epochs} --seed SEED"
            + (f" --kl-warmup {cfg.train.kl_warmup}" if cfg.train.kl_warmup else ""))


def records(path: Path) -> list[dict]:
    if not (path / METRICS).exists():
        return []
    return [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line]


# ---------------------------------------------------------------- the supervised baseline

class Stopped(Exception):
    """A signal arrived while a baseline was computed (it is recomputed whole next time)."""


def baseline(cfg: RunConfig, stop: Callable[[], bool] = lambda: False) -> dict:
    """The classifier alone, on the run's labelled rows, for ``cfg.train.epochs`` epochs:
    per epoch its validation and test accuracy. ``stop`` is polled every epoch; when it
    returns True, :class:`Stopped` is raised."""
    t = cfg.train
    data = load_run_data(cfg)  # the run's split, pixels and seeded label draw
    device = torch.device(t.device)
    data = data.to(device)
    builder = STORIES.lookup(cfg.story.model)
    args = resolve_weights(builder, cfg.story.args, cfg.model, restoring=False)
    with seeded(t.seed):  # as the run's own story is built: its classifier's first weights
        story, guide = builder(cfg.model, data.data_dim, **args)
    story, guide = story.to(device), guide.to(device)  # they share the classifier
    # What the run's classifier is fitted on (a story may train it on noisier inputs than
    # it classifies: m1m2's draws); the accuracies below are scored as the run's own are,
    # from the guide's q(y | x).
    train_logits = getattr(story, "train_logits", story.classify)
    rows = torch.nonzero(data.train.known).flatten()
    labels = data.train.labels
    size, steps = min(t.batch_size, len(rows)), math.ceil(len(data.train) / t.batch_size)
    opt = torch.optim.Adam(story.parameters(), lr=t.lr, betas=t.adam_betas, eps=t.adam_eps)
    gen, stream, out = torch.Generator().manual_seed(t.seed), torch.empty(0, dtype=torch.long), []
    start = time.perf_counter()
    with seeded(t.seed, device):  # the binarization draws of data.draw
        for epoch in range(t.epochs):
            if stop():
                raise Stopped
            for _ in range(steps):
                while len(stream) < size:
                    stream = torch.cat([stream, rows.cpu()[torch.randperm(len(rows), generator=gen)]])
                index, stream = stream[:size].to(device), stream[size:]
                logits = train_logits(data.draw(data.train.x[index]))
                loss = F.cross_entropy(logits, labels[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            # The guide's draws must leave the training stream (binarization) as it was.
            with torch.random.fork_rng(devices=cuda_devices(device)):
                acc = {f"{name}_accuracy": accuracy(*pair)
                       for name, pair in scored_splits(story, guide, data, t.seed).items()}
            out.append({"epoch": epoch + 1, **acc})
    return {"epochs": out, "steps_per_epoch": steps, "batch": size,
            "seconds": time.perf_counter() - start}


def baseline_records(path: Path, cfg: RunConfig, stop: Callable[[], bool] = lambda: False
                     ) -> list[dict]:
    """``baseline.json``'s epochs, computed when it has fewer than the run's."""
    file = path / BASELINE
    if file.exists():
        saved = json.loads(file.read_text())
        if len(saved["epochs"]) >= cfg.train.epochs:
            return saved["epochs"]
    print(f"[{path.name}] supervised baseline, {cfg.train.epochs} epochs", file=sys.stderr)
    result = baseline(cfg, stop)
    path.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(result, indent=1) + "\n")
    return result["epochs"]


# ---------------------------------------------------------------- M2

def train_m2(path: Path, cfg: RunConfig, stop: Callable[[], bool]) -> bool:
    """Train, resume or leave the run in ``path`` (up to ``cfg.train.epochs``); whether it
    has all its epochs."""
    done, what = len(records(path)), cfg.story.model or "VAE"
    if not (path / CHECKPOINT).exists():
        print(f"[{path.name}] {what}, {cfg.train.epochs} epochs", file=sys.stderr)
        train_run(cfg, path.parent, path.name, progress=False, stop=stop)
    elif done < cfg.train.epochs or not (path / "summary.json").exists():
        print(f"[{path.name}] {what}, resuming at epoch {done}", file=sys.stderr)
        resume_run(path, max(cfg.train.epochs, done), progress=False,
                   changes={"device": cfg.train.device}, stop=stop)
    return len(records(path)) >= cfg.train.epochs


def finished(path: Path, epochs: int) -> bool:
    """Whether the run in ``path`` has its ``epochs``, its summary and its baseline."""
    base = path / BASELINE
    return (len(records(path)) >= epochs and (path / "summary.json").exists()
            and base.exists() and len(json.loads(base.read_text())["epochs"]) >= epochs)


def in_progress(path: Path) -> str:
    """'' or ' (+k steps)' when the checkpoint stands inside an epoch."""
    if not (path / CHECKPOINT).exists():
        return ""
    state = load_checkpoint(path / CHECKPOINT).state
    return f" (+{state.step} steps)" if state.step else ""


# ---------------------------------------------------------------- the table

def at_best_val(lines: list[dict]) -> float:
    """Test accuracy at the first epoch of highest validation accuracy."""
    best = max(range(len(lines)), key=lambda i: (lines[i]["val_accuracy"], -i))
    return lines[best]["test_accuracy"]


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{sd}"


def table(args: argparse.Namespace) -> str:
    recipe = RECIPES[args.recipe]
    out = [f"M2 protocol, recipe `{args.recipe}`: {recipe.about}. MNIST: 54,000 training "
           f"images, validation accuracy on 6,000, test accuracy on the official 10,000; "
           f"seeds {args.seeds}; {args.epochs} epochs planned. The baseline is read at the "
           f"epoch its M2 run has reached (at its own last epoch where M2 has none).", "",
           "| labels | M2 runs | M2 epochs done (per seed) | M2 test, last epoch | M2 test at "
           "best val | baseline test, same epoch | baseline test at best val | M2 − baseline "
           "| Kingma et al. |",
           "|---|---|---|---|---|---|---|---|---|"]
    gaps: list[float | None] = []
    for labels in args.labels:
        m2_last, m2_best, base_last, base_best, done, paired = [], [], [], [], [], []
        for seed in args.seeds:
            path = args.out / args.recipe / f"m2-{labels}-s{seed}"
            lines = records(path)
            done.append(f"{len(lines)}{in_progress(path)}")
            base = json.loads((path / BASELINE).read_text())["epochs"] if (path / BASELINE).exists() else []
            at = len(lines) or len(base)
            if not base or len(base) < at:
                continue
            base_last.append(base[at - 1]["test_accuracy"])
            base_best.append(at_best_val(base[:at]))
            if lines:
                m2_last.append(lines[-1]["test_accuracy"])
                m2_best.append(at_best_val(lines))
                paired.append(m2_last[-1] - base_last[-1])
        gap = statistics.mean(paired) if paired else None
        gaps.append(gap)
        out.append(f"| {labels} | {len(m2_last)} | {', '.join(done)} | {summary(m2_last)} | "
                   f"{summary(m2_best)} | {summary(base_last)} | {summary(base_best)} | "
                   f"{'–' if gap is None else f'{gap:+.4f}'} | {recipe.published.get(labels, float('nan')):.4f} |")
    finished = all(len(records(args.out / args.recipe / f"m2-{n}-s{s}")) >= args.epochs
                   for n in args.labels for s in args.seeds)
    behind = [n for n, gap in zip(args.labels, gaps) if gap is not None and gap <= 0]
    verdict = (f"no: at or below it at {', '.join(map(str, behind))} labels" if behind else
               "yes" if finished else "not yet: runs unfinished")
    out += ["", f"M2 beats the baseline at every label count (last epoch, mean of the paired "
                f"differences): {verdict}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, recipe in RECIPES.items():
            print(f"{name}: {recipe.about}\n    {command(recipe)}")
            if recipe.m1_epochs:
                print(f"    M1_RUN: {m1_command(recipe)}")
        return 0
    if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; nothing to run")
        return 0
    torch.set_num_threads(args.threads)
    if not args.table:
        with stop_on_signals() as signalled:
            try:
                run_protocol(args, signalled)
            except Stopped:
                pass
        if signalled():  # Ctrl-C or SIGTERM: every fit stopped at a step, checkpointed
            print("m2_protocol.py: stopped by a signal; the runs stand at their last "
                  "checkpoints, and the same command resumes them", file=sys.stderr)
            return 130
    print(table(args))
    return 0


def run_protocol(args: argparse.Namespace, signalled: Callable[[], bool]) -> None:
    """Train (or resume) every (labels, seed) run of ``args.recipe`` with its baseline, until
    done, ``--minutes`` have passed, or ``signalled()``."""
    started = time.monotonic()
    deadline = math.inf if args.minutes is None else started + 60 * args.minutes
    stop = lambda: signalled() or time.monotonic() > deadline  # noqa: E731
    recipe = RECIPES[args.recipe]
    try:
        for seed in args.seeds:
            for labels in args.labels:
                if stop():
                    break
                cfg = run_config(recipe, labels, seed, args.epochs, args.device, args.data_root,
                                 args.out)
                path = args.out / args.recipe / f"m2-{labels}-s{seed}"
                if finished(path, args.epochs):
                    continue  # also a run carried without its weights or its M1 (carry.py)
                if recipe.m1_epochs and not train_m2(m1_folder(args.out, seed, recipe.m1_name),
                                                     m1_config(recipe, cfg), stop):
                    break  # the budget ran out inside M1; the same command goes on with it
                if recipe.active:
                    cfg = with_active(cfg)
                baseline_records(path, cfg, stop)
                if not args.baselines_only:
                    train_m2(path, cfg, stop)
    finally:
        print(f"wall time of this invocation: {time.monotonic() - started:.0f} s",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
