"""Where M2's unlabelled term pulls its classifier: the story's own posterior over y.

On an unlabelled image M2 maximizes Σ_y q(y | x) (ELBO(x, y) − log q(y | x)), whose best q is
q(y | x) ∝ exp ELBO(x, y): the generative model's own posterior over the digit. So the
classifier can gain from unlabelled images only where that posterior classifies better than
it does. This prints, for a trained ``--model m2`` run, on the first ``--points`` validation
images (labels used only to score): the accuracy of argmax_y ELBO(x, y) (each ELBO averaged
over ``--draws`` draws of z ~ q(z | x, y)), the accuracy of argmax q(y | x), how often the two
agree, and the mean spread max_y − min_y of ELBO(x, y) in nats.

    OMP_NUM_THREADS=1 python benchmarks/m2_posterior.py benchmarks/runs/m2_protocol/labelled/m2-100-s0
"""

from __future__ import annotations

import argparse
import sys

import torch

from pyro_vae import load_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = load_run(args.run)
    model, guide = run.model, run.guide
    x = run.data.eval_split("val", seed=args.seed)[:args.points]
    truth = run.data.val.labels[:args.points]
    torch.manual_seed(args.seed)
    elbo = torch.zeros(model.classes, len(x))
    with torch.no_grad():
        for c in range(model.classes):
            y = torch.full((len(x),), c)
            for _ in range(args.draws):
                q = guide.z_dist(x, y)
                z = q.sample()
                log_w = model.x_dist(z, y).log_prob(x) + model.z_dist(len(x)).log_prob(z) - q.log_prob(z)
                elbo[c] += log_w / args.draws
        classifier = model.classifier(x).argmax(-1)
    generative = elbo.argmax(0)
    spread = float((elbo.max(0).values - elbo.min(0).values).mean())
    print(f"{args.run}: {len(x)} validation images; argmax_y ELBO(x, y) accuracy "
          f"{float((generative == truth).double().mean()):.4f}, argmax q(y | x) accuracy "
          f"{float((classifier == truth).double().mean()):.4f}, agreement "
          f"{float((generative == classifier).double().mean()):.4f}, ELBO spread over y "
          f"{spread:.1f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
