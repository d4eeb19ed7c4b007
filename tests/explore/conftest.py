"""A digits run shared by the explorer's tests (trained by the CLI, so train writes the page)."""

from __future__ import annotations

import pytest

from support import train_tiny


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory):
    """A 2-D digits VAE, a few epochs of a small network: its decoder makes digit-like means."""
    return train_tiny(tmp_path_factory.mktemp("explore"), "vae", "--epochs", "15",
                      "--hidden", "64", "--objective", "elbo")
