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
- **pyro-vae**: :func:`pyro_vae.evaluation.log_importance_weights` running the
  model and guide programs (Pyro traces with a particle plate), then log-mean-exp.
- **before**: the same pyro-vae call with the ``bernoulli`` likelihood scoring through
  torch's own Bernoulli, as before issue 15 (the floor and pyro-vae both use the
  library's element-wise path, ``BernoulliLogits``); issue 15's target is pyro-vae ≥
  1.25× this.

Targets: pyro-vae ≥ 2.5× the loop's images/s and ≥ 0.8× the floor's. floor,
pyro-vae and before are interleaved chunk by chunk over the same images, so load from other
processes hits both alike; times are CPU time of this process (stable on a
shared machine with 1 thread) and wall time. Peak memory above the resident
set before the call (Linux VmHWM after resetting it; CUDA: peak allocated), of
the full ``evaluate`` in a fresh process, is printed for two N. (Live tensors are
bounded by construction; the process's resident high-water mark still rises
sublinearly with N as the C heap settles, see the issue-4 note.)

    python benchmarks/bench_evaluate.py                         # K = 1000, all 10,000 test images
    python benchmarks/bench_evaluate.py --points 1000 --samples 1000 --loop-points 10

With ``--ais`` it times annealed importance sampling instead (guide start, T steps, C
chains, L leapfrog steps): :func:`pyro_vae.evaluation.ais` beside **hand AIS**, a hand-written
batched loop of the same arithmetic (encode once; per evaluation decode all images ×
chains, Bernoulli log-likelihood + N(0, I) prior + the guide's diagonal Normal, one
autograd gradient; the same warm-up pass, schedule, leapfrog and accept steps), interleaved
chunk by chunk; target ≥ 0.8× its speed. Peak memory above the resident set is printed for
one ``ais`` call. The issue's full size (1,000 images, T = 1000, C = 16) is extrapolated
from the rate measured here (linear in images × chains × T on a CPU):

    python benchmarks/bench_evaluate.py --ais                   # 32 images, T = 50, C = 16
    python benchmarks/bench_evaluate.py --ais --ais-points 1000 --ais-steps 1000   # the issue's size
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.nn.functional import logsigmoid, softplus

from pyro_vae.config import DataConfig, ModelConfig
from pyro_vae.data import load_data
from pyro_vae.evaluation import (
    Adaptation,
    AISConfig,
    ais,
    default_chunks,
    log_importance_weights,
    sigmoid_schedule,
)
from pyro_vae.models import likelihoods
from pyro_vae.stories import build_vae
from pyro_vae.traces import log_mean_exp

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
    p.add_argument("--ais", action="store_true", help="time AIS (pyro-vae vs hand-written) instead")
    p.add_argument("--ais-points", type=int, default=32, help="AIS: test images")
    p.add_argument("--ais-steps", type=int, default=50, help="AIS: T")
    p.add_argument("--ais-chains", type=int, default=16, help="AIS: C")
    p.add_argument("--ais-leapfrog", type=int, default=10, help="AIS: leapfrog steps per transition")
    return p.parse_args(argv)


def normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Σ_d log N(z_d; loc_d, scale_d²) over the last dim."""
    return (-((z - loc) / scale) ** 2 / 2 - scale.log() - HALF_LOG_2PI).sum(-1)


def bernoulli_log_mass(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; σ(l)) elementwise, by the element-wise path the library uses
    (``BernoulliLogits``): log σ(l) − (1 − x)·l, x broadcast against the logits."""
    return torch.addcmul(logsigmoid(logits), 1 - x, logits, value=-1)


@contextlib.contextmanager
def torch_bernoulli() -> Iterator[None]:
    """Inside, the ``bernoulli`` likelihood scores with torch's own Bernoulli (through
    ``binary_cross_entropy_with_logits``), as pyro-vae did before issue 15."""
    original = likelihoods.BernoulliLogits
    likelihoods.BernoulliLogits = dist.Bernoulli
    try:
        yield
    finally:
        likelihoods.BernoulliLogits = original


def log_weights(model, guide, x: Tensor, z: Tensor, q) -> Tensor:
    """log p(x|z) + log p(z) − log q(z|x) by hand, for z ``[k, n, d]``: ``[k, n]``."""
    log_px = bernoulli_log_mass(model.decoder(z), x).sum(-1)
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


def before_iwae(model, guide, x: Tensor, K: int, k_chunk: int) -> Tensor:
    """pyro-vae as it was before issue 15: the same call with torch's Bernoulli."""
    with torch_bernoulli():
        return pyro_vae_iwae(model, guide, x, K, k_chunk)


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
    runs = {"floor": lambda c: floor_iwae(model, guide, c, args.samples, args.particle_chunk),
            "pyro-vae": lambda c: pyro_vae_iwae(model, guide, c, args.samples, args.particle_chunk),
            "before": lambda c: before_iwae(model, guide, c, args.samples, args.particle_chunk)}
    totals = {name: [0.0, 0.0] for name in runs}
    agree = []
    for i, lo in enumerate(range(0, len(x), args.point_chunk)):
        chunk = x[lo:lo + args.point_chunk]
        order = list(runs)[i % 3:] + list(runs)[:i % 3]  # each goes first in turn
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
    from pyro_vae.evaluation import evaluate

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


class HandAIS:
    """Hand-written batched AIS with the arithmetic of :func:`pyro_vae.evaluation.ais` (guide start)
    for the MLP VAE: z ``[C, n, d]``, log f_β = (1 − β) log q(z|x) + β (log p(z) + log p(x|z))."""

    def __init__(self, model, guide, x: Tensor, cfg: AISConfig) -> None:
        self.decoder, self.x, self.cfg = model.decoder, x, cfg
        q = guide.z_dist(x)
        self.q, self.loc, self.scale = q, q.base_dist.loc, q.base_dist.scale

    def log_f_grad(self, z: Tensor, b0: float, b1: float) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_px = bernoulli_log_mass(self.decoder(z), self.x).sum(-1)
            log_joint = log_px + (-z**2 / 2 - HALF_LOG_2PI).sum(-1)
            log_q = normal_log_prob(z, self.loc, self.scale)
            f0, f1 = (1 - b0) * log_q + b0 * log_joint, (1 - b1) * log_q + b1 * log_joint
            grad, = torch.autograd.grad(f1.sum(), z)
        return f0.detach(), f1.detach(), grad

    def hmc(self, z: Tensor, f: Tensor, grad: Tensor, beta: float, eps: Tensor):
        step = eps[None, :, None]
        p0 = torch.randn_like(z)
        q, p = z, p0 + 0.5 * step * grad
        for i in range(self.cfg.leapfrog):
            q = q + step * p
            _, new_f, new_grad = self.log_f_grad(q, beta, beta)
            p = p + (step if i < self.cfg.leapfrog - 1 else 0.5 * step) * new_grad
        log_ratio = torch.nan_to_num(new_f - f - 0.5 * (p.pow(2).sum(-1) - p0.pow(2).sum(-1)),
                                     nan=-math.inf)
        accept = torch.rand_like(log_ratio).log() < log_ratio
        return torch.where(accept[..., None], q, z), accept

    def anneal(self, z: Tensor, betas: Tensor, eps: Tensor | None, adapt: Adaptation | None):
        log_w = torch.zeros(z.shape[:2])
        for t in range(1, len(betas)):
            f0, f1, grad = self.log_f_grad(z, float(betas[t - 1]), float(betas[t]))
            log_w = log_w + f1 - f0
            if t == len(betas) - 1:
                break
            z, accept = self.hmc(z, f1, grad, float(betas[t]), adapt.eps if adapt else eps[t])
            if adapt is not None:
                adapt.update(float(betas[t]), accept.float().mean(0))
        return log_w

    @torch.no_grad()
    def __call__(self) -> Tensor:
        cfg, n = self.cfg, self.x.shape[0]
        draw = lambda: self.q.sample((cfg.chains,))  # noqa: E731
        adapt = Adaptation(torch.full((n,), cfg.initial_step_size), cfg.target_accept)
        z = draw()
        for _ in range(10):
            _, f, grad = self.log_f_grad(z, 0.0, 0.0)
            z, accept = self.hmc(z, f, grad, 0.0, adapt.eps)
            adapt.update(0.0, accept.float().mean(0))
        self.anneal(z, sigmoid_schedule(min(cfg.warmup_steps, cfg.steps), cfg.sharpness,
                                        torch.float32), None, adapt)
        betas = sigmoid_schedule(cfg.steps, cfg.sharpness, torch.float32)
        return log_mean_exp(self.anneal(draw(), betas, adapt.schedule(betas), None))


def bench_ais(model, guide, x: Tensor, args, device) -> None:
    """pyro-vae's AIS and the hand-written loop on the same chunks, alternating; peak memory."""
    cfg = AISConfig(steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog)
    x = x[:args.ais_points]
    chunk = cfg.chunk(device)
    for p in (*model.parameters(), *guide.parameters()):  # both loops differentiate z alone
        p.requires_grad_(False)
    print(f"AIS on {len(x)} MNIST test images, 784-400-50 MLP VAE, guide start, T = {cfg.steps}, "
          f"C = {cfg.chains}, L = {cfg.leapfrog}, warm-up {min(cfg.warmup_steps, cfg.steps)} steps, "
          f"{chunk} images per chunk, device {device}, {args.threads} thread(s)")
    runs = {"hand AIS": lambda c: HandAIS(model, guide, c, cfg)(),
            "pyro-vae": lambda c: ais(model, guide, c, cfg, seed=None).estimate.per_point}
    totals = {name: [0.0, 0.0] for name in runs}
    results: dict[str, list[Tensor]] = {name: [] for name in runs}
    for i, lo in enumerate(range(0, len(x), chunk)):
        for name in (list(runs) if i % 2 == 0 else list(reversed(runs))):
            c0, w0 = clock(device)
            results[name].append(runs[name](x[lo:lo + chunk]).double().cpu())
            c1, w1 = clock(device)
            totals[name][0] += c1 - c0
            totals[name][1] += w1 - w0
    means = {name: float(torch.cat(v).mean()) for name, v in results.items()}
    print(f"  mean log p̂(x): hand AIS {means['hand AIS']:.2f}, pyro-vae {means['pyro-vae']:.2f} "
          f"nats (independent chains)")
    rates = {name: show(name, len(x), cpu, wall) for name, (cpu, wall) in totals.items()}
    cpu_ratio = rates["pyro-vae"] / rates["hand AIS"]
    wall_ratio = (totals["hand AIS"][1] / totals["pyro-vae"][1])
    verdict = "met" if max(cpu_ratio, wall_ratio) >= 0.8 else "NOT met"
    print(f"  pyro-vae / hand AIS: {cpu_ratio:.2f}× (CPU), {wall_ratio:.2f}× (wall); "
          f"target ≥ 0.8× {verdict}")
    per_unit = totals["pyro-vae"][1] / (len(x) * cfg.chains * cfg.steps)
    print(f"  the issue's size (1,000 images, T = 1000, C = 16, L = {cfg.leapfrog}) at this rate: "
          f"{per_unit * 1000 * 16 * 1000 / 3600:.1f} h wall")
    for n in (256, 1024):  # one and four chunks of 256 images: memory must not grow with N
        cmd = [sys.executable, __file__, "--memory-probe", "--ais", "--ais-points", str(n),
               "--ais-steps", "5", "--ais-chains", str(cfg.chains), "--ais-leapfrog",
               str(cfg.leapfrog), "--threads", str(args.threads), "--device", args.device,
               "--data-root", str(args.data_root)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
        print(f"  ais(N = {n:4d}, C = {cfg.chains}) in a fresh process: peak memory above its "
              f"resident set before the call {float(out):8.1f} MiB")


def ais_memory_probe(model, guide, x: Tensor, args, device) -> None:
    """Run inside a fresh process: peak memory of one ``ais`` call, in MiB."""
    cfg = AISConfig(steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog,
                    warmup_steps=args.ais_steps)
    peak = peak_extra_bytes(lambda: ais(model, guide, x[:args.ais_points], cfg), device)
    print(f"{peak / 2**20:.1f}")


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
        probe = ais_memory_probe if args.ais else memory_probe
        return probe(model, guide, x, args, device)
    if args.ais:
        return bench_ais(model, guide, x, args, device)
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
    for base, target in (("loop", 2.5), ("floor", 0.8), ("before", 1.25)):
        cpu_ratio, wall_ratio = (rates["pyro-vae"][i] / rates[base][i] for i in (0, 1))
        verdict = "met" if max(cpu_ratio, wall_ratio) >= target else "NOT met"
        print(f"  pyro-vae / {base}: {cpu_ratio:.2f}× (CPU), {wall_ratio:.2f}× (wall); "
              f"target ≥ {target}× {verdict}")
    memory_vs_n(args)


if __name__ == "__main__":
    main()
