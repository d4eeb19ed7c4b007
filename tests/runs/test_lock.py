"""One writer per run folder (pyro_vae/runs/lock.py): a second train or --resume is refused at
once naming the holder; the lock dies with its holder; readers need none and always see a
whole checkpoint; the temporary-file sweep spares live writers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from torch import nn

from pyro_vae.files import atomic_write, sweep_temporary, temp_prefix
from pyro_vae.runs import lock as lock_module
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.folders import CHECKPOINT, METRICS
from pyro_vae.runs.lock import LOCK_FILE, RunLock, RunLockedError
from pyro_vae.state import TrainState

from support import run_cli  # the CLI in this process: exit status, stderr

TINY = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "256",
        "--device", "cpu", "--no-progress"]

# A second process that takes the lock, says so on stdout, and holds it until killed
# (lock.py alone is loaded, not the package with torch, to start in a fraction of a second).
HOLD = ("import importlib.util as u, sys, time; "
        "s = u.spec_from_file_location('lock', sys.argv[2]); "
        "m = sys.modules['lock'] = u.module_from_spec(s); s.loader.exec_module(m); "
        "m.RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), lock_module.__file__],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_lock_is_refused_naming_the_holder_and_released_with_it(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on {socket.gethostname()}, "
                                             rf"since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()  # free again once released
    assert (tmp_path / LOCK_FILE).exists()  # the file stays; only the flock comes and goes


def test_train_and_resume_refused_while_another_process_writes(tmp_path, capsys):
    """Exit 2 at once, one line naming the holder's pid, nothing of the folder changed; once
    the holder dies (SIGKILL: no clean-up of its own) the OS has released the lock."""
    argv = ["train", *TINY, "--epochs", "1", "--out", str(tmp_path), "--name", "r"]
    assert run_cli(argv, capsys)[0] == 0
    run = tmp_path / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_FILE}
    holder = _holder(run)
    try:
        for args in (["train", "--resume", str(run), "--epochs", "2", "--no-progress"], argv):
            code, err = run_cli(args, capsys)
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and f"pid {holder.pid} on " in err, err
            assert "being written by another pyro-vae train" in err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_FILE} == before
    finally:
        _kill(holder)
    code, err = run_cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert len((run / METRICS).read_text().splitlines()) == 2


def test_readers_take_no_lock_and_see_whole_checkpoints(tmp_path):
    """A reader (evaluate, diagnose) loads the checkpoint while a writer rewrites it over and
    over: every load is a complete checkpoint of some epoch (checksum verified)."""
    net = nn.Linear(200, 200)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, net, None, TrainState(epoch=0), {})
    lock = RunLock(tmp_path).acquire()  # held by the writer; the reader ignores it
    done = threading.Event()

    def write() -> None:
        for epoch in range(1, 40):
            save_checkpoint(path, net, None, TrainState(epoch=epoch), {})
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen = set()
    while not done.is_set():
        seen.add(load_checkpoint(path).state.epoch)
    writer.join()
    lock.release()
    assert seen and seen <= set(range(40))


def test_sweep_removes_only_temporary_files_of_dead_writers(tmp_path):
    """The issue's failure: one writer's sweep deleted another live writer's temporary
    file. Now a file named for a live pid (this one) survives; a dead pid's goes."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = tmp_path / "f.bin"
    atomic_write(path, b"x")
    assert not list(tmp_path.glob(".f.bin.*"))  # nothing left behind by a write that finished
    live = tmp_path / (temp_prefix(path) + "abc.tmp")
    dead = tmp_path / (temp_prefix(path).replace(f"-{os.getpid()}-", f"-{gone.pid}-") + "abc.tmp")
    other_host = tmp_path / f".f.bin.00000000-{gone.pid}-abc.tmp"
    for f in (live, dead, other_host):
        f.write_bytes(b"partial")
    assert sweep_temporary(path) == [dead]
    assert live.exists() and other_host.exists() and not dead.exists()
    atomic_write(path, b"y")  # a write sweeps the same way
    assert live.exists() and path.read_bytes() == b"y"


def test_lock_error_is_not_taken_for_a_full_lock_table(tmp_path, monkeypatch):
    """Only 'would block' means another holder; any other flock failure is raised as is."""
    import errno
    import fcntl

    def broken(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="No locks available"):
        RunLock(tmp_path).acquire()

