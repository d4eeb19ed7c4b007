"""Throughput of the IWAE estimate of log p(x) (K draws per image) three ways, in one run.

On MNIST test images with a 784-400-50 MLP VAE (freshly built: the cost of an
evaluation does not depend on the weights' values), each measures
log (1/K Σ_k p(x, z_k) / q(z_k | x)) per image:

- **loop** (baseline 1, the way other libraries compute test NLL, written here
  after the pattern of pythae's ``get_nll``): for each image, stack 100 copies
  of it, run encoder and decoder on them, K/100 times, score with
  ``torch.distributions`` (argument validation on) and read the result back
  with ``.item()``; gradient tracking stays on, as it does there. Slow, so it is
  timed on ``--loop-points`` images only.
- **floor** (baseline 2): hand-written batched PyTorch that encodes each image
  once and decodes K samples in large batches under ``torch.no_grad()``.
- **pyro-vae**: :func:`pyro_vae.evaluate.log_importance_weights` running the
  model and guide programs (Pyro traces with a particle plate), then log-mean-exp.

Targets: pyro-vae ≥ 2.5× the loop's images/s and ≥ 0.8× the floor's. floor and
pyro-vae are interleaved chunk by chunk over the same images, so load from other
processes hits both alike; times are CPU time of this process (stable on a
shared machine with 1 thread) and wall time. Peak memory above the resident
set before the call (Linux VmHWM after resetting it; CUDA: peak allocated), of
the full ``evaluate`` in a fresh process, is printed for two N. (Live tensors are
bounded by construction; the process's resident high-water mark still rises
sublinearly with N as the C heap settles, see the issue-4 note.)

    python benchmarks/bench_evaluate.py                         # K = 1000, all 10,000 test images
    python benchmarks/bench_evaluate.py --points 1000 --samples 1000 --loop-points 10
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

from pyro_vae.build import build_vae
from pyro_vae.config import DataConfig, ModelConfig
from pyro_vae.data import load_data
from pyro_vae.evaluate import default_chunks, log_importance_weights, log_mean_exp

REPO = Path(__file__).resolve().parents[1]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=10000, help="test images for floor and pyro-vae")
    p.add_argument("--samples", type=int, default=1000, help="K, draws per image")
    p.add_argument("--loop-points", type=int, default=20, help="images for the per-image loop")
    p.add_argument("--particle-chunk", type=int, default=None,
                   help="pyro-vae and floor: draws per call (default: default_chunks)")
    p.add_argument("--point-chunk", type=int, default=None,
                   help="pyro-vae and floor: images per call (default: default_chunks)")
    p.add_argument("--loop-batch", type=int, default=100, help="loop: copies per pass")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Σ_d log N(z_d; loc_d, scale_d²) over the last dim."""
    return (-((z - loc) / scale) ** 2 / 2 - scale.log() - HALF_LOG_2PI).sum(-1)


def log_weights(model, guide, x: Tensor, z: Tensor, q) -> Tensor:
    """log p(x|z) + log p(z) − log q(z|x) by hand, for z ``[k, n, d]``: ``[k, n]``."""
    logits = model.decoder(z)
    log_px = -binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = (-z**2 / 2 - HALF_LOG_2PI).sum(-1)
    return log_px + log_pz - normal_log_prob(z, q.base_dist.loc, q.base_dist.scale)


def loop_iwae(model, guide, x: Tensor, K: int, batch: int) -> list[float]:
    """Baseline 1: per image, ``K // batch`` passes of ``batch`` copies through encoder and decoder."""
    out = []
    for i in range(len(x)):
        xi = x[i].unsqueeze(0)
        log_w = []
        for _ in range(max(1, K // batch)):
            reps = torch.cat(batch * [xi])
            h = guide.encoder(reps)
            mu, std = guide.head.loc(h), softplus(guide.head.raw_scale(h)) + guide.head.floor
            z = mu + std * torch.randn_like(std)
            log_q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_px = torch.distributions.Bernoulli(logits=model.decoder(z)).log_prob(reps).sum(-1)
            log_w.append(log_px + log_pz - log_q)
        out.append((log_mean_exp(torch.cat(log_w))).item())
    return out


@torch.no_grad()
def floor_iwae(model, guide, x: Tensor, K: int, k_chunk: int) -> Tensor:
    """Baseline 2: encode once, decode K draws in chunks of ``k_chunk``: ``[n]``."""
    q = guide.z_dist(x)
    parts = [log_weights(model, guide, x, q.sample((min(k_chunk, K - lo),)), q)
             for lo in range(0, K, k_chunk)]
    return log_mean_exp(torch.cat(parts))


def pyro_vae_iwae(model, guide, x: Tensor, K: int, k_chunk: int) -> Tensor:
    return log_mean_exp(log_importance_weights(model, guide, x, K, particle_chunk=k_chunk,
                                               point_chunk=len(x)))


def clock(device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.process_time(), time.perf_counter()


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_extra_bytes(fn, device: torch.device) -> float:
    """Peak memory used by ``fn()`` above what was in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - before
    try:
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return float("nan")
    fn()
    return _status("VmHWM") - before


def timed_interleaved(model, guide, x: Tensor, args, device) -> dict[str, list[float]]:
    """CPU and wall seconds of floor and pyro-vae over the same point chunks, alternating."""
    totals = {"floor": [0.0, 0.0], "pyro-vae": [0.0, 0.0]}
    runs = {"floor": lambda c: floor_iwae(model, guide, c, args.samples, args.particle_chunk),
            "pyro-vae": lambda c: pyro_vae_iwae(model, guide, c, args.samples, args.particle_chunk)}
    agree = []
    for i, lo in enumerate(range(0, len(x), args.point_chunk)):
        chunk = x[lo:lo + args.point_chunk]
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        results = {}
        for name in order:
            c0, w0 = clock(device)
            results[name] = runs[name](chunk)
            c1, w1 = clock(device)
            totals[name][0] += c1 - c0
            totals[name][1] += w1 - w0
        agree.append((results["floor"] - results["pyro-vae"]).abs().mean().item())
    print(f"  floor vs pyro-vae IWAE per image: mean |difference| {sum(agree) / len(agree):.3f} nats "
          f"(independent draws; expected about the Monte Carlo error)")
    return totals


def show(name: str, n: int, cpu: float, wall: float) -> float:
    rate = n / cpu
    print(f"  {name:9s} {n:6d} images  {cpu:8.2f} s CPU {wall:8.2f} s wall  "
          f"{rate:9.2f} images/s (CPU)  {n / wall:9.2f} images/s (wall)")
    return rate


def memory_probe(model, guide, x: Tensor, args, device) -> None:
    """Run inside a fresh process: peak memory of ``evaluate`` on ``x`` above the process's
    resident set (data and model loaded) just before; prints one number in MiB."""
    from pyro_vae.evaluate import evaluate

    peak = peak_extra_bytes(lambda: evaluate(model, guide, x, num_samples=args.samples,
                                             particle_chunk=args.particle_chunk,
                                             point_chunk=args.point_chunk), device)
    print(f"{peak / 2**20:.1f}")


def memory_vs_n(args) -> None:
    """pyro-vae's full ``evaluate`` (prior MC, ELBO, IWAE, PSIS) at two N, each in a fresh
    process (a process keeps freed memory, so one that has already run would hide growth)."""
    for n in sorted({min(args.points, 256), min(args.points, 2048)}):
        cmd = [sys.executable, __file__, "--memory-probe", "--points", str(n), "--samples",
               str(args.samples), "--threads", str(args.threads), "--device", args.device,
               "--data-root", str(args.data_root)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
        print(f"  evaluate(N = {n:5d}, K = {args.samples}) in a fresh process: peak memory above "
              f"its resident set before the call {float(out):8.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.particle_chunk, args.point_chunk = default_chunks(device, args.particle_chunk,
                                                           args.point_chunk)
    data = load_data(DataConfig(name="mnist", root=str(args.data_root), binarize="threshold"))
    x = data.test.x[:args.points].to(device)
    model, guide = build_vae(ModelConfig(latent_dim=50, hidden_sizes=(400,)), data.data_dim, seed=0)
    model.to(device).eval()
    guide.to(device).eval()
    torch.manual_seed(0)
    if args.memory_probe:
        return memory_probe(model, guide, x, args, device)
    print(f"MNIST test images, 784-400-50 MLP VAE, K = {args.samples}, device {device}, "
          f"{args.threads} thread(s), chunks {args.particle_chunk} draws × {args.point_chunk} images")
    n_loop = min(args.loop_points, len(x))
    loop_iwae(model, guide, x[:1], args.loop_batch, args.loop_batch)  # warm up every path
    floor_iwae(model, guide, x[:args.point_chunk], args.particle_chunk, args.particle_chunk)
    pyro_vae_iwae(model, guide, x[:args.point_chunk], args.particle_chunk, args.particle_chunk)
    c0, w0 = clock(device)
    loop_iwae(model, guide, x[:n_loop], args.samples, args.loop_batch)
    c1, w1 = clock(device)
    totals = timed_interleaved(model, guide, x, args, device)
    rates = {"loop": (n_loop / (c1 - c0), n_loop / (w1 - w0))}
    for name, (cpu, wall) in [("loop", (c1 - c0, w1 - w0))] + list(totals.items()):
        show(name, n_loop if name == "loop" else len(x), cpu, wall)
        rates[name] = ((n_loop if name == "loop" else len(x)) / cpu,
                       (n_loop if name == "loop" else len(x)) / wall)
    for base, target in (("loop", 2.5), ("floor", 0.8)):
        cpu_ratio, wall_ratio = (rates["pyro-vae"][i] / rates[base][i] for i in (0, 1))
        verdict = "met" if max(cpu_ratio, wall_ratio) >= target else "NOT met"
        print(f"  pyro-vae / {base}: {cpu_ratio:.2f}× (CPU), {wall_ratio:.2f}× (wall); "
              f"target ≥ {target}× {verdict}")
    memory_vs_n(args)


if __name__ == "__main__":
    main()
