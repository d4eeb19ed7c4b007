"""Checkpoints: exact round trip, atomic writes under kill -9, checksums against truncation
and corruption, pickles refused without running, and architecture mismatches named."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save
from torch import nn

from pyro_vae import faults
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data.loading import from_tensor
from pyro_vae.files import atomic_write
from pyro_vae.infer.loop import fit
from pyro_vae.runs.checkpoint import (
    CheckpointError,
    flatten_state,
    header_digest,
    load_checkpoint,
    load_modules,
    save_checkpoint,
)
from pyro_vae.state import TrainState
from pyro_vae.stories.build import build_vae

from support import Evil  # a pickle that would create a marker file

MARKER_NAME = "pwned"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A checkpoint of a one-epoch fit (Adam state, history, RNG states) and its modules."""
    torch.manual_seed(0)
    x = (torch.rand(64, 4, 4) > 0.5).float()
    data = from_tensor(x)
    model, guide = build_vae(ModelConfig(latent_dim=2, hidden_sizes=(8,)), 16, seed=0)
    result = fit(model, guide, data, TrainConfig(epochs=1, batch_size=16, device="cpu"),
                 progress=False)
    result.state.perm_rng = torch.Generator().manual_seed(3).get_state()
    result.state.torch_rng = torch.get_rng_state()
    modules = nn.ModuleDict({"model": model, "guide": guide})
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    save_checkpoint(path, modules, result.optimizer, result.state, {"config": {"hello": 1}})
    return path, modules, result


def test_round_trip_is_exact(fitted):
    path, modules, result = fitted
    ckpt = load_checkpoint(path)
    assert ckpt.meta == {"config": {"hello": 1}}
    saved = modules.state_dict()
    assert ckpt.modules.keys() == saved.keys()
    assert all(torch.equal(ckpt.modules[k], saved[k]) for k in saved)
    assert ckpt.state.history == result.state.history and ckpt.state.epoch == 1
    assert torch.equal(ckpt.state.torch_rng, result.state.torch_rng)
    opt = result.optimizer.state_dict()
    for pid, slots in opt["state"].items():
        assert all(torch.equal(torch.as_tensor(v), ckpt.optimizer["state"][pid][k])
                   for k, v in slots.items())
    fresh = torch.optim.Adam(modules.parameters())
    fresh.load_state_dict(ckpt.optimizer)  # the optimizer accepts what was saved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncation_is_detected(fitted, tmp_path_factory, data):
    path, _, _ = fitted
    raw = path.read_bytes()
    keep = data.draw(st.integers(0, len(raw) - 1), label="bytes kept")
    bad = tmp_path_factory.mktemp("trunc") / "c.safetensors"
    bad.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError, match="truncated|corrupt|not a pyro-vae checkpoint"):
        load_checkpoint(bad)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corruption_is_detected_or_harmless(fitted, tmp_path_factory, data):
    """Any flipped byte is refused, unless it only changed JSON whitespace (same contents)."""
    path, modules, _ = fitted
    raw = bytearray(path.read_bytes())
    where = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[where] ^= data.draw(st.integers(1, 255), label="xor")
    bad = tmp_path_factory.mktemp("flip") / "c.safetensors"
    bad.write_bytes(bytes(raw))
    try:
        ckpt = load_checkpoint(bad)
    except CheckpointError as err:
        assert str(bad) in str(err)
        return
    saved = modules.state_dict()
    assert all(torch.equal(ckpt.modules[k], saved[k]) for k in saved)


def test_checksum_names_the_problem(fitted, tmp_path):
    """A flipped bit inside a parameter's bytes parses fine; only the checksum sees it."""
    path, _, _ = fitted
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256 checksum does not match"):
        load_checkpoint(bad)


@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / MARKER_NAME
    bad = tmp_path / "checkpoint.safetensors"
    if writer == "pickle":
        bad.write_bytes(pickle.dumps({"model": Evil(marker)}))
    else:
        torch.save({"model": Evil(marker)}, bad, _use_new_zipfile_serialization=writer == "torch-zip")
    with pytest.raises(CheckpointError, match="not a pyro-vae checkpoint.*never loaded"):
        load_checkpoint(bad)
    assert not marker.exists()
    # The file really is malicious: an unguarded load runs it (a .pt name, since this torch
    # hands a .safetensors name to safetensors).
    pt = bad.rename(tmp_path / "checkpoint.pt")
    (torch.load(pt, weights_only=False) if writer != "pickle" else pickle.loads(pt.read_bytes()))
    assert marker.exists()


def _crafted(path: Path, edit) -> None:
    """A well-formed safetensors file with a valid checksum and an edited header."""
    modules = nn.Linear(2, 2)
    tensors, header = flatten_state(modules, None, TrainState())
    header.update(format="pyro-vae-checkpoint/1", meta={})
    edit(header)
    text = json.dumps(header)
    path.write_bytes(st_save(tensors, metadata={"pyro_vae": text, "sha256": header_digest(tensors, text)}))


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(format="pyro-vae-checkpoint/99"), "has format 'pyro-vae-checkpoint/99'"),
    (lambda h: h["state"].update(evil=1), "malformed header"),
    (lambda h: h["state"].update(history=[{"epoch": "x", "bogus": 2}]), "malformed header"),
    (lambda h: h.pop("state"), "malformed header"),
])
def test_crafted_header_is_refused(tmp_path, edit, match):
    """The checksum is no signature: a crafted file passes it, so its header is checked too."""
    bad = tmp_path / "c.safetensors"
    _crafted(bad, edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("cfg, match", [
    (ModelConfig(latent_dim=2, hidden_sizes=(9,)),
     r"parameter 'model\.decoder\.net\.0\.weight' has shape \[8, 2\] but this model expects \[9, 2\]"),
    (ModelConfig(latent_dim=3, hidden_sizes=(8,)), r"parameter '.*' has shape .* different architecture"),
    (ModelConfig(latent_dim=2, hidden_sizes=(8,), likelihood="gaussian"),
     r"lacks parameter 'model\.likelihood\.raw_sigma' \(shape \[1\]\)"),
])
def test_other_architecture_names_the_parameter(fitted, cfg, match):
    path, _, _ = fitted
    model, guide = build_vae(cfg, 16, seed=0)
    with pytest.raises(CheckpointError, match=match):
        load_modules(nn.ModuleDict({"model": model, "guide": guide}), load_checkpoint(path).modules,
                     str(path))


def test_extra_parameter_is_named(fitted):
    path, modules, _ = fitted
    saved = dict(load_checkpoint(path).modules, **{"model.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="has parameter 'model.extra.weight' that this model"):
        load_modules(modules, saved, str(path))


def _payloads(tmp_path: Path) -> list[bytes]:
    """Two valid checkpoints of a few MB each, so that a write takes a while."""
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        p = tmp_path / f"{seed}.safetensors"
        save_checkpoint(p, nn.Linear(1024, 1024), None, TrainState(epoch=seed), {})
        out.append(p.read_bytes())
    return out


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            body()
        finally:
            os._exit(0)
    return pid


def test_kill_9_in_the_middle_of_a_write_keeps_the_old_checkpoint(tmp_path):
    """The writer kills itself (SIGKILL, the crash-test hook of pyro_vae/faults.py) once half
    of the new bytes reached the disk."""
    old, new = _payloads(tmp_path)
    target = tmp_path / "checkpoint.safetensors"
    atomic_write(target, old)

    def child():
        os.environ[faults.ENV] = "checkpoint.safetensors/partial:1"  # this process only
        atomic_write(target, new)

    pid = _fork(child)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = list(tmp_path.glob(".checkpoint.safetensors.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == len(new) // 2
    assert target.read_bytes() == old
    assert load_checkpoint(target).state.epoch == 1
    atomic_write(target, new)
    assert not list(tmp_path.glob(".checkpoint.safetensors.*.tmp")), "the next write sweeps it"
    assert target.read_bytes() == new


def test_kill_9_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    payloads = _payloads(tmp_path)
    target = tmp_path / "checkpoint.safetensors"
    atomic_write(target, payloads[0])
    rng = random.Random(0)

    def writer():
        for i in range(10_000):
            atomic_write(target, payloads[i % 2])

    for _ in range(8):
        pid = _fork(writer)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert target.read_bytes() in payloads
        assert load_checkpoint(target).state.epoch in (1, 2)
