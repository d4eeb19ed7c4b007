"""Assertions behind benchmarks/gpu_check.sh: pyro-vae's CUDA path keeps everything on the GPU.

    python benchmarks/gpu_check.py [mnist|digits]

Trains with ``device="cuda"`` (default and JIT objectives), checks where every
parameter, optimizer state and data split lives, counts host↔device copies in
20 steps with ``torch.profiler``, and evaluates on the GPU. Exits non-zero on
the first failed check.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pyro_vae.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.data import Data, Split, load_data
from pyro_vae.evaluation import evaluate
from pyro_vae.infer import fit, mean_elbo
from pyro_vae.stories import build_vae

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
WARMUP, STEPS = 3, 20
# Per step, reads back allowed: the scalar loss for ``fit``, and in the eager
# Trace_ELBO Pyro's own NaN check of the loss and of its gradient (warn_if_nan).
MAX_DTOH_PER_STEP = 3


def check_on_gpu(session, state, record) -> None:
    """An epoch callback: every tensor the fit touches is on the GPU."""
    assert session.device.type == "cuda", session.device
    for name in ("train", "val", "test"):
        assert getattr(session.data, name).x.is_cuda, f"{name} split is not on the GPU"
    assert all(p.is_cuda for p in session.modules().parameters()), "a parameter is on the CPU"
    for slots in session.optimizer.state.values():
        assert all(v.is_cuda for v in slots.values() if torch.is_tensor(v)), "optimizer state on CPU"
    print(f"  epoch {record.epoch}: {record.seconds:.2f} s, {record.images_per_second:.0f} img/s, "
          f"train ELBO {record.train_elbo:.2f}, val {record.val_elbo}: all on cuda")


class CopyCounter:
    """``fit``'s stop hook: profiles steps WARMUP+1 .. WARMUP+STEPS (inside one epoch)."""

    def __init__(self) -> None:
        self.ticks = 0
        self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])

    def __call__(self) -> bool:
        self.ticks += 1
        if self.ticks == WARMUP + 1:
            torch.cuda.synchronize()
            self.prof.__enter__()
        elif self.ticks == WARMUP + STEPS + 1:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
        return False

    def copies(self) -> tuple[int, int]:
        count = lambda tag: sum(e.count for e in self.prof.key_averages() if tag in e.key)  # noqa: E731
        return count("HtoD"), count("DtoH")


def check_copies(data: Data, objective: str) -> None:
    batch = 256
    sub = dataclasses.replace(data, train=Split(data.train.x[:batch * (WARMUP + STEPS + 2)], None))
    model, guide = build_vae(ModelConfig(latent_dim=50, hidden_sizes=(400,)), data.data_dim, seed=0)
    counter = CopyCounter()
    fit(model, guide, sub, TrainConfig(epochs=1, batch_size=batch, device="cuda", objective=objective),
        stop=counter, progress=False)
    htod, dtoh = counter.copies()
    print(f"  {objective}: {STEPS} steps made {htod} host-to-device and {dtoh} device-to-host copies")
    assert htod == 0, f"{objective}: {htod} host-to-device copies in {STEPS} steps"
    assert dtoh <= MAX_DTOH_PER_STEP * STEPS, f"{objective}: {dtoh} device-to-host copies"


def main(name: str) -> None:
    data = load_data(DataConfig(name=name, root=str(ROOT)))
    model, guide = build_vae(ModelConfig(latent_dim=50, hidden_sizes=(400,)), data.data_dim, seed=0)
    print(f"training 2 epochs of {name} on {torch.cuda.get_device_name()}")
    fit(model, guide, data, TrainConfig(epochs=2, batch_size=256, device="cuda"),
        callbacks=[check_on_gpu], progress=False)
    for objective in ("elbo", "elbo-jit"):
        check_copies(data.to("cuda"), objective)
    x = data.eval_split("test").to("cuda")
    print(f"  test ELBO on the GPU: {mean_elbo(model, guide, x):.2f} nats")
    ev = evaluate(model, guide, x[:256], num_samples=500)
    means = {k: round(v["mean"], 2) for k, v in ev.summary()["estimates"].items()}
    print(f"  evaluate K=500 on 256 test images, log p(x) estimates (nats): {means}")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print("CUDA path: OK")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mnist")
