"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint holds the model and guide parameters, the optimizer state, the
fit's :class:`~pyro_vae.infer.TrainState` (epoch, position in the epoch, RNG
states, history) and the run's config. A SHA-256 digest of all of it sits in
the metadata; loading recomputes it, so truncation or corruption is caught.
Files are written atomically: temporary file, fsync, rename. A full disk is reported as
:class:`DiskFullError` (the file named, the space needed) with the old file intact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from pyro_vae.files import atomic_write
from pyro_vae.state import EpochRecord, TrainState
from pyro_vae.weights import first_mismatch

FORMAT = "pyro-vae-checkpoint/1"
_STATE_TENSORS = ("perm", "perm_rng", "torch_rng", "cuda_rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, foreign or mismatched."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: plain state dicts, ready for ``load_state_dict``."""

    modules: dict[str, Tensor]
    optimizer: dict[str, Any]
    state: TrainState
    meta: dict[str, Any]
    digest: str = ""
    """The SHA-256 checksum the file carries (of its tensors and header)."""


def header_digest(tensors: dict[str, Tensor], header: str) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies; a tensor reached under two names (a network that model and
    guide both register) is copied, as safetensors refuses shared storage."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, value in tensors.items():
        t = value.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def flatten_state(modules: nn.Module, optimizer: torch.optim.Optimizer | None,
             state) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = _unshared({f"modules/{k}": v for k, v in modules.state_dict().items()})
    header: dict[str, Any] = {"param_groups": None}
    if optimizer is not None:
        opt = optimizer.state_dict()
        header["param_groups"] = opt["param_groups"]
        for pid, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"optim/{pid}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    fields = dataclasses.asdict(state)
    for key in _STATE_TENSORS:
        value = fields.pop(key)
        if value is not None:
            tensors[f"state/{key}"] = value.detach().cpu().contiguous()
    header["state"] = fields
    return tensors, header


def save_checkpoint(path: Path, modules: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state, meta: dict[str, Any]) -> None:
    """Write ``modules`` (e.g. ``ModuleDict(model=..., guide=...)``), optimizer and fit state."""
    write_flat(path, *flatten_state(modules, optimizer, state), meta)


def frozen_state(modules: nn.Module, optimizer: torch.optim.Optimizer | None,
                 state) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`flatten_state` as copies that later steps do not change: what a checkpoint of
    this moment holds, to be written later by :func:`write_flat`."""
    tensors, header = flatten_state(modules, optimizer, state)
    return {k: v.clone() for k, v in tensors.items()}, header


def write_flat(path: Path, tensors: dict[str, Tensor], header: dict[str, Any],
               meta: dict[str, Any]) -> None:
    """Write a checkpoint from :func:`flatten_state`'s (or :func:`frozen_state`'s) output."""
    header = dict(header, format=FORMAT, meta=meta)
    text = json.dumps(header, sort_keys=True)
    payload = st_save(tensors, metadata={"pyro_vae": text, "sha256": header_digest(tensors, text)})
    atomic_write(Path(path), payload)


# A temporary file is named after its writer, so that the sweep below can tell whose it is.


def _read_metadata(raw: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors payload, checked to be ours."""
    not_ours = CheckpointError(f"{path} is not a pyro-vae checkpoint (expected a safetensors file "
                               f"written by pyro-vae; pickled checkpoints are never loaded)")
    if len(raw) < 8:
        raise CheckpointError(f"{path} is truncated ({len(raw)} bytes)")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise (not_ours if size > 100_000_000 else
               CheckpointError(f"{path} is truncated: its header needs {size} bytes, "
                               f"the file has {len(raw) - 8}"))
    try:
        header = json.loads(raw[8:8 + size])
        meta = header["__metadata__"]
        found = json.loads(meta["pyro_vae"])["format"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise not_ours from None
    if found != FORMAT:
        raise CheckpointError(f"{path} has format {found!r}; this pyro-vae reads {FORMAT!r}")
    return meta


def _unflatten(tensors: dict[str, Tensor], header: dict[str, Any]) -> tuple[dict, dict, dict]:
    modules = {k[len("modules/"):]: v for k, v in tensors.items() if k.startswith("modules/")}
    opt_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, slot = key.split("/", 2)
            opt_state.setdefault(int(pid), {})[slot] = value
    state = dict(header["state"])
    for key in _STATE_TENSORS:
        state[key] = tensors.get(f"state/{key}")
    return modules, {"state": opt_state, "param_groups": header["param_groups"]}, state


def load_checkpoint(path: Path) -> Checkpoint:
    """Read, verify and unpack a checkpoint; no code in the file is ever executed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    meta = _read_metadata(raw, path)
    try:
        tensors = st_load(raw)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is corrupt or truncated: {err}") from None
    if header_digest(tensors, meta["pyro_vae"]) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its SHA-256 checksum does not match its contents")
    header = json.loads(meta["pyro_vae"])
    try:
        modules, optimizer, fields = _unflatten(tensors, header)
        fields["history"] = [EpochRecord(**r) for r in fields["history"]]
        optimizer = optimizer if header["param_groups"] is not None else None
        return Checkpoint(modules, optimizer, TrainState(**fields), header["meta"], meta["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        # A checksum guards against accidents, not against a crafted file: its header is
        # still untrusted, and any surprise in it is reported, never half-used.
        raise CheckpointError(f"{path} has a malformed header ({type(err).__name__}: {err})") from None


def _legacy_names(saved: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """pyro-vae 0.1.0 saved the built-in modules without the ``story.`` level that
    :class:`~pyro_vae.programs.Program` adds (``model.decoder...`` for ``model.story.decoder...``)."""
    if any(k in expected for k in saved):
        return saved
    renamed = {k.replace(".", ".story.", 1): v for k, v in saved.items()}
    return renamed if set(renamed) <= set(expected) else saved


def load_modules(target: nn.Module, saved: dict[str, Tensor], source: str) -> None:
    """``target.load_state_dict(saved)``, with an error that names the first mismatch."""
    expected = target.state_dict()
    saved = _legacy_names(saved, expected)
    wrong = first_mismatch(expected, saved)
    if wrong:
        raise CheckpointError(f"{source}: {wrong}: it was written for a different architecture")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise CheckpointError(f"{source} has parameter {extra[0]!r} that this model lacks: "
                              f"it was written for a different architecture")
    target.load_state_dict(saved)
