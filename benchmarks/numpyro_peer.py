"""The peer in ``bench_train.py``: the same VAE trained by NumPyro, in a worker process.

The model and guide are NumPyro programs with the networks of ``bench_train.py``'s
floor (D-H-Z MLPs, the chosen activation, a diagonal Normal guide whose σ is
softplus(·) + 1e-3, N(0, I) prior, Bernoulli logits), trained by ``SVI.update`` with
``Trace_ELBO`` and Adam (lr 1e-3), the pattern of NumPyro's ``examples/vae.py``: a
whole run of steps is one jitted ``lax.fori_loop`` in which each step takes its rows
of a permutation and draws their dynamic binarization, so no Python runs per step.

The worker is started once (``python numpyro_peer.py --serve``); it reads the training
images from an ``.npy`` file, compiles, then answers ``steps SEED`` lines on stdin
with one JSON line ``{"wall": s, "cpu": s}`` per step (after one untimed run of the
same length, so the compilation is not counted). ``bench_train.py`` calls it in its
interleaved repeats; the thread setting and the CPU pinning are the caller's. Needs
``jax`` and ``numpyro`` (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Before jax is imported: one thread means one Eigen thread in XLA's CPU backend.
if os.environ.get("PEER_THREADS") == "1":
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1")


def networks(hidden: int, latent: int, data_dim: int, activation: str):
    """(encoder, decoder) as ``stax`` pairs: x ↦ (μ, σ) and z ↦ logits."""
    from jax.example_libraries import stax

    act = {"relu": stax.Relu, "softplus": stax.Softplus, "tanh": stax.Tanh}[activation]
    encoder = stax.serial(stax.Dense(hidden), act, stax.FanOut(2),
                          stax.parallel(stax.Dense(latent),
                                        stax.serial(stax.Dense(latent), stax.Softplus)))
    decoder = stax.serial(stax.Dense(hidden), act, stax.Dense(data_dim))
    return encoder, decoder


def programs(args: argparse.Namespace, data_dim: int):
    """The NumPyro model and guide: z ~ N(0, I), x ~ Bernoulli(logits = f(z))."""
    import numpyro
    import numpyro.distributions as dist

    encoder, decoder = networks(args.hidden, args.latent, data_dim, args.activation)

    def model(x):
        f = numpyro.module("decoder", decoder, (args.batch, args.latent))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([args.latent]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=f(z)).to_event(1), obs=x)

    def guide(x):
        g = numpyro.module("encoder", encoder, (args.batch, data_dim))
        loc, raw = g(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(loc, raw + 1e-3).to_event(1))

    return model, guide


def trainer(args: argparse.Namespace, images):
    """(state, run): ``run(state, key, steps)`` takes ``steps`` SVI steps in one jitted loop."""
    import jax
    import jax.numpy as jnp
    from numpyro import optim
    from numpyro.infer import SVI, Trace_ELBO

    x_all = jnp.asarray(images)
    n, b = x_all.shape[0], args.batch
    model, guide = programs(args, x_all.shape[1])
    svi = SVI(model, guide, optim.Adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), x_all[:b])

    def run(state, key, steps):
        perm = jax.random.permutation(key, n)

        def step(i, carry):
            st, total = carry
            rows = jax.lax.dynamic_slice(perm, ((i * b) % (n - b + 1),), (b,))
            p = x_all[rows]
            x = (jax.random.uniform(jax.random.fold_in(key, i), p.shape) < p).astype(p.dtype)
            st, loss = svi.update(st, x)
            return st, total + loss

        return jax.lax.fori_loop(0, steps, step, (state, 0.0))

    return state, jax.jit(run, static_argnums=2)


def serve(args: argparse.Namespace) -> None:
    import jax
    import numpy as np

    state, run = trainer(args, np.load(args.images))
    compiled: set[int] = set()
    print(json.dumps({"ready": True, "jax": jax.__version__}), flush=True)
    for line in sys.stdin:
        steps, seed = (int(v) for v in line.split())
        if steps not in compiled:  # the first run of a length compiles it
            state, total = run(state, jax.random.PRNGKey(seed + 10_000), steps)
            total.block_until_ready()
            compiled.add(steps)
        wall, cpu = time.perf_counter(), time.process_time()
        state, total = run(state, jax.random.PRNGKey(seed), steps)
        total.block_until_ready()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({"wall": wall / steps, "cpu": cpu / steps,
                          "loss": float(total) / steps}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", required=True)
    p.add_argument("--images", required=True, help=".npy file [N, D] float32 in [0, 1]")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument("--activation", default="relu")
    serve(p.parse_args(argv))


if __name__ == "__main__":
    main()
