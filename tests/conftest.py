"""Shared fixtures: small data, the real MNIST folder when present, a fast run config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _trust_file(tmp_path_factory):
    """Story digests trusted by ``train`` go to a file of this session, never the real home
    (set in the environment, so the command lines tests run in subprocesses see it too)."""
    before = os.environ.get("PYRO_VAE_TRUST_FILE")
    os.environ["PYRO_VAE_TRUST_FILE"] = str(tmp_path_factory.mktemp("trust") / "trusted.json")
    yield Path(os.environ["PYRO_VAE_TRUST_FILE"])
    if before is None:
        os.environ.pop("PYRO_VAE_TRUST_FILE", None)
    else:
        os.environ["PYRO_VAE_TRUST_FILE"] = before


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share 2 cores; one intra-op thread keeps them from oversubscribing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _few_threads_in_module_fixtures():
    """The same for module-scoped fixtures (a run trained once per module), which are set up
    before the per-test fixture above; autouse fixtures come first within their scope."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mnist_root() -> Path:
    """``../shared/data`` when it holds MNIST; the test is skipped otherwise."""
    if not (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("real MNIST not found at ../shared/data")
    return MNIST_ROOT


@pytest.fixture
def tiny_config() -> RunConfig:
    """Digits, a small network, two quick epochs."""
    return RunConfig(model=ModelConfig(latent_dim=2, hidden_sizes=(32,)),
                     data=DataConfig(name="digits"),
                     train=TrainConfig(epochs=2, batch_size=256, device="cpu"))
