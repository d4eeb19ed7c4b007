"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint holds the model and guide parameters, the optimizer state, the
fit's :class:`~pyro_vae.fit.TrainState` (epoch, position in the epoch, RNG
states, history) and the run's config. A SHA-256 digest of all of it sits in
the metadata; loading recomputes it, so truncation or corruption is caught.
Files are written atomically: temporary file, fsync, rename. A full disk is reported as
:class:`DiskFullError` (the file named, the space needed) with the old file intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from pyro_vae.state import EpochRecord, TrainState

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


def _digest(tensors: dict[str, Tensor], header: str) -> str:
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


def _flatten(modules: nn.Module, optimizer: torch.optim.Optimizer | None,
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
    tensors, header = _flatten(modules, optimizer, state)
    header.update(format=FORMAT, meta=meta)
    text = json.dumps(header, sort_keys=True)
    payload = st_save(tensors, metadata={"pyro_vae": text, "sha256": _digest(tensors, text)})
    atomic_write(Path(path), payload)


class DiskFullError(OSError):
    """No space was left on the device for a file pyro-vae writes; the file is as it was."""

    def __init__(self, path: Path, needed: int, err: OSError) -> None:
        self.path, self.needed = Path(path), needed
        try:
            free = f"{shutil.disk_usage(self.path.parent).free:,} bytes are free there"
        except OSError:
            free = "the free space could not be read"
        super().__init__(err.errno, f"no space left on the device for {self.path}: writing it "
                                    f"needs {needed:,} bytes, {free}")

    def __str__(self) -> str:
        return str(self.strerror)


_FULL = (errno.ENOSPC, errno.EDQUOT)
# A temporary file is named after its writer, so that the sweep below can tell whose it is.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}-"


def atomic_write(path: Path, payload: bytes) -> None:
    """Replace ``path`` by ``payload`` so that a crash leaves either the old or the new file.

    Raises:
        DiskFullError: the device is full; ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_of(path))  # mkstemp makes 0600; keep the file readable as before
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _FULL:
            raise DiskFullError(path, len(payload), err) from None
        raise
    sweep_temporary(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_of(path: Path) -> int:
    """The permissions ``path`` has, or those a new file gets under the process's umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        pass
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        umask = int(status["Umask"].strip(), 8)
    except (OSError, KeyError, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_temporary(path: Path) -> list[Path]:
    """Remove the temporary files that writers of ``path`` on this host left when they died
    mid-write; a live writer's file, and any other host's, is left alone. Returns the removed."""
    removed = []
    for stale in Path(path).parent.glob(f".{Path(path).name}.{_HOST}-*-*.tmp"):
        pid = stale.name[len(f".{Path(path).name}.{_HOST}-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def appended(path: Path, text: str) -> Iterator[None]:
    """Append ``text`` to ``path`` for good only if the ``with`` block succeeds: on any
    failure (e.g. the checkpoint the line describes could not be written) the file is cut
    back to its former length, which needs no space.

    Raises:
        DiskFullError: the device is full (the file is as it was).
    """
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(text)
            f.flush()
        yield
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.truncate(path, size)
        if isinstance(err, OSError) and err.errno in _FULL and not isinstance(err, DiskFullError):
            raise DiskFullError(path, len(text.encode()), err) from None
        raise


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
    if _digest(tensors, meta["pyro_vae"]) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its SHA-256 checksum does not match its contents")
    header = json.loads(meta["pyro_vae"])
    try:
        modules, optimizer, fields = _unflatten(tensors, header)
        fields["history"] = [EpochRecord(**r) for r in fields["history"]]
        optimizer = optimizer if header["param_groups"] is not None else None
        return Checkpoint(modules, optimizer, TrainState(**fields), header["meta"])
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
    for name, value in expected.items():
        if name not in saved:
            raise CheckpointError(f"{source} lacks parameter {name!r} (shape {list(value.shape)}): "
                                  f"it was written for a different architecture")
        if saved[name].shape != value.shape:
            raise CheckpointError(f"{source}: parameter {name!r} has shape {list(saved[name].shape)} "
                                  f"but this model expects {list(value.shape)}: different architecture")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise CheckpointError(f"{source} has parameter {extra[0]!r} that this model lacks: "
                              f"it was written for a different architecture")
    target.load_state_dict(saved)
