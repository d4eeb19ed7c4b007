"""How much of the digit M1's frozen code holds (issue 22): classifiers on the code alone.

    OMP_NUM_THREADS=1 python benchmarks/code_ceiling.py --seed 1     # after m2_protocol's M1
    OMP_NUM_THREADS=1 python benchmarks/code_ceiling.py --seed 1 --recipe m1m2-m1-warmup

The ``m1m2`` recipe holds M1 fixed and fits M2 on the mean of its q(z1 | x). Whether its
shortfall at 100 labels (0.907 against Kingma et al.'s 0.9667) is the code's or the
semi-supervised fit's is a question of what a classifier can read off that code given more
labels. For M1 of seed S (``--out/m1/m1-sS``, fitted by ``m2_protocol.py --recipe m1m2``):
the mean code of the 54,000 training, 6,000 validation and 10,000 test images (each split one
binarization seeded S, as the protocol scores), then three classifiers trained on the code of
100 and 3,000 labelled training images (the protocol's balanced label draw for seed S) and of
all 54,000: logistic regression, 1-nearest-neighbour, and an MLP of M2's classifier's shape
(one hidden layer of 500 softplus units; Adam lr 1e-3, batch 100, 5,000 steps, nothing
selected). Each on all 50 dimensions and on M1's active ones (as ``m1m2-active`` reads).
Reported: validation and test accuracy. The table goes to stdout and ``--out``'s
``code_ceiling/m1-sS.json``. Without MNIST under ``--data-root`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from m2_protocol import RECIPES, REPO, active_dims, m1_folder, run_config
from pyro_vae import STORIES, seeded
from pyro_vae.runs import load_run_data, resolve_weights

LABELS = (100, 3000, None)  # None: every training image's label
STEPS, BATCH, WIDTH = 5000, 100, 500


def codes(recipe: str, seed: int, root: Path, out: Path) -> tuple[dict, tuple[int, ...]]:
    """{split: (code [N, 50], labels [N])} and the active dimensions, from M1 of ``seed``
    under ``recipe``'s settings (``m1m2``, or a recipe with an M1 of its own)."""
    cfg = run_config(RECIPES[recipe], 100, seed, 1, "cpu", root, out)
    data = load_run_data(cfg)
    builder = STORIES.lookup(cfg.story.model)
    story, _ = builder(cfg.model, data.data_dim,
                       **resolve_weights(builder, cfg.story.args, cfg.model, restoring=False))
    with torch.no_grad():
        split = {name: (story.code(data.eval_split(name, seed=seed)), getattr(data, name).labels)
                 for name in ("train", "val", "test")}
    return split, active_dims(cfg)


def known(labels: int | None, seed: int, root: Path, out: Path) -> Tensor:
    """The training rows whose labels a run of ``labels`` (None: all) sees, ``[54000]``
    (the draw is the protocol's, the same under every recipe)."""
    cfg = run_config(RECIPES["m1m2"], labels or 100, seed, 1, "cpu", root, out)
    mask = load_run_data(cfg).train.known
    return torch.ones_like(mask) if labels is None else mask


def mlp(x: np.ndarray, y: np.ndarray, seed: int):
    """M2's classifier's shape fitted by cross-entropy; a function of codes to labels."""
    with seeded(seed):
        net = nn.Sequential(nn.Linear(x.shape[1], WIDTH), nn.Softplus(), nn.Linear(WIDTH, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xs, ys = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        for _ in range(STEPS):
            index = torch.randint(len(xs), (min(BATCH, len(xs)),))
            loss = nn.functional.cross_entropy(net(xs[index]), ys[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return lambda z: net(torch.as_tensor(z, dtype=torch.float32)).argmax(-1).numpy()


def fitted(kind: str, x: np.ndarray, y: np.ndarray, seed: int):
    """A classifier of ``kind`` fitted on ``x`` ``[n, d]``, ``y`` ``[n]``: its predict."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if kind == "mlp":
        return mlp(x, y, seed)
    model = (LogisticRegression(max_iter=3000) if kind == "logreg"
             else KNeighborsClassifier(n_neighbors=1))
    return model.fit(x, y).predict


def rows(split: dict, pick: Tensor, active: tuple[int, ...], seed: int) -> list[dict]:
    """Every classifier on all dimensions and on the active ones, trained on the rows
    ``pick`` ``[54000]`` (bool)."""
    out = []
    for dims_name, dims in (("all 50", list(range(split["train"][0].shape[1]))),
                            (f"{len(active)} active", list(active))):
        data = {k: (z[:, dims].double().numpy(), y.numpy()) for k, (z, y) in split.items()}
        x, y = data["train"][0][pick.numpy()], data["train"][1][pick.numpy()]
        for kind in ("logreg", "1-nn", "mlp"):
            predict = fitted(kind, x, y, seed)
            acc = {f"{k}_accuracy": float((predict(z) == t).mean())
                   for k, (z, t) in data.items() if k != "train"}
            out.append({"labels": int(pick.sum()), "dims": dims_name, "classifier": kind, **acc})
            print(f"  {out[-1]}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default="m1m2",
                   choices=[name for name, r in RECIPES.items() if r.m1_epochs],
                   help="whose M1 (m2_protocol.py's recipes with one; m1m2's is shared by its "
                        "variants but m1m2-m1-warmup's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "m2_protocol")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    if not (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"MNIST not found under {args.data_root}/MNIST/raw; nothing to run")
        return 0
    m1 = m1_folder(args.out, args.seed, RECIPES[args.recipe].m1_name)
    if not (m1 / "checkpoint.safetensors").exists():
        print(f"code_ceiling.py: error: no M1 run at {m1}: fit it with m2_protocol.py "
              f"--recipe {args.recipe} --seeds {args.seed}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start, found = time.perf_counter(), []
    split, active = codes(args.recipe, args.seed, args.data_root, args.out)
    for labels in LABELS:
        found += rows(split, known(labels, args.seed, args.data_root, args.out), active, args.seed)
    lines = ["| labelled rows | dimensions | classifier | validation | test |", "|---|---|---|---|---|"]
    lines += [f"| {r['labels']:,} | {r['dims']} | {r['classifier']} | {r['val_accuracy']:.4f} | "
              f"{r['test_accuracy']:.4f} |" for r in found]
    print("\n".join(lines) + f"\n\nM1 of {m1}; active dimensions {list(active)}; "
          f"{time.perf_counter() - start:.0f} s")
    target = args.out / "code_ceiling" / f"{m1.parent.name}-s{args.seed}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"seed": args.seed, "active": list(active), "rows": found},
                                 indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
