"""Data-parallel fitting (pyro_vae/distributed.py) under ``torchrun`` with 2 gloo processes on
127.0.0.1: a data-parallel step is the single-process step on the concatenated batch, a
short fit reaches the single-process validation ELBO, rank 0 alone writes, and a resume
with another number of processes is refused."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.distributed import SINGLE, World, rank_seed, shard
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.folders import CHECKPOINT, METRICS
from pyro_vae.runs.lock import LOCK_FILE, RunLock

from support import run_cli  # the CLI in this process: exit status, stderr

# A story whose guide draws its noise from each image itself (a fixed pseudo-random function
# of the row), so that 2 ranks with their own random streams and 1 process make the same
# draws: what remains to compare is the data-parallel arithmetic. q(z | x) is still the
# reparameterized Gaussian N(loc, scale): z = loc + scale·ε, scored by its own log-density.
STORY = '''
import pyro, torch
import pyro.distributions as dist
from torch import nn


class Story(nn.Module):
    def __init__(self, data_dim):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, data_dim))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


class Guide(nn.Module):
    def __init__(self, data_dim):
        super().__init__()
        self.encoder = nn.Linear(data_dim, 4)
        self.register_buffer("mix", torch.randn(data_dim, 2, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        scale = log_scale.exp()
        u = torch.frac(torch.sin(x @ self.mix + 0.5) * 43758.5453).clamp(1e-4, 1 - 1e-4)
        z = loc + scale * (2 ** 0.5) * torch.erfinv(2 * u - 1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(z, log_density=dist.Normal(loc, scale).log_prob(z).sum(-1),
                                        event_dim=1))
'''

BASE = ["--data", "digits", "--device", "cpu", "--no-progress"]

# Each rank joins the group once and runs the CLI's train twice (torch and pyro are imported
# once per process: the imports, not the fits, are most of this test's time).
DRIVER = """
import json, sys
import torch.distributed as dist
from pyro_vae.cli import main


def run(argv):
    try:
        return main(argv)
    except SystemExit as exit_:  # how a rank other than 0 ends on a refusal
        return exit_.code


dist.init_process_group("gloo")
codes = [run(argv) for argv in json.loads(sys.argv[1])]
# A file per rank, not a line on the shared pipe: two ranks' prints can interleave mid-line.
with open(f"{sys.argv[2]}/codes{dist.get_rank()}.json", "w") as out:
    json.dump(codes, out)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(folder: Path, runs: list[list[str]], timeout: float = 240) -> dict[int, list[int]]:
    """``torchrun --nproc-per-node 2`` on 127.0.0.1, a free port, gloo: each of ``runs``;
    the exit status of each, by rank."""
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(driver),
           json.dumps(runs), str(folder)]
    for stale in folder.glob("codes*.json"):
        stale.unlink()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {int(f.stem[len("codes"):]): json.loads(f.read_text())
             for f in folder.glob("codes*.json")}
    assert sorted(found) == [0, 1], proc.stdout[-3000:] + proc.stderr[-3000:]
    return found


def test_shards_and_seeds():
    rows = torch.arange(7)
    parts = [shard(rows, World(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), rows)  # every row once, in order
    assert torch.equal(shard(rows, SINGLE), rows)
    assert rank_seed(5, 0) == 5  # one process is the plain fit
    assert len({rank_seed(5, r) for r in range(4)}) == 4 and rank_seed(-3, 1) >= 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two fits, each by 2 ranks (``*/two``) and by one process (``*/one``):

    - ``steps``: a story whose draws come from the rows (below), one epoch of two steps
      (1024 rows, then the last 414; 512 and 207 per rank);
    - ``vae``: the built-in VAE with random draws per rank, dynamic binarization and the
      JIT objective, 8 epochs; by 2 ranks also 4 epochs then ``--resume`` to 8 (``*/resumed``);
    - ``steps/locked``: a folder whose lock this process holds, which the 2 ranks must refuse;
    - ``vae/lost``: ``vae`` by 2 ranks, rank 1 killed mid-epoch 4 (:func:`_lose_rank_one`),
      then resumed by 2 ranks (in the same torchrun job as the fits above).
    """
    folder = tmp_path_factory.mktemp("ddp")
    story = folder / "rowdraws.py"
    story.write_text(STORY)
    steps = [*BASE, "--model", f"{story}:Story", "--guide", f"{story}:Guide", "--binarize",
             "threshold", "--objective", "elbo", "--batch-size", "1024", "--epochs", "1",
             "--lr", "0.01", "--out", str(folder / "steps")]
    vae = [*BASE, "--hidden", "32", "--latent-dim", "2", "--batch-size", "128", "--epochs", "8",
           "--out", str(folder / "vae")]
    resumed = str(folder / "vae" / "resumed")
    (folder / "steps" / "locked").mkdir(parents=True)
    lock = RunLock(folder / "steps" / "locked").acquire()
    _lose_rank_one(["train", *vae, "--name", "lost"], folder)
    codes = _torchrun(folder, [["train", *steps, "--name", "two"], ["train", *vae, "--name", "two"],
                               ["train", *vae, "--name", "resumed", "--epochs", "4"],
                               ["train", "--resume", resumed, "--epochs", "8", "--no-progress"],
                               ["train", *steps, "--name", "locked"],
                               ["train", "--resume", str(folder / "vae" / "lost"), "--no-progress"]])
    lock.release()
    (folder / "codes.json").write_text(json.dumps(codes))
    for argv in (steps, vae):
        code, _ = run_cli(["train", *argv, "--name", "one"])
        assert code == 0
    return folder


def test_two_ranks_take_the_single_process_steps(runs):
    """With the same draws: parameters after the steps within 1e-6 of one process on the
    whole batches, Adam's first moments (0.1·gradient after one step, 0.19·g1 + 0.1·g2
    after two) within 1e-5 of their largest entry (float32 sums of ~500 rows in another
    order: a few float32 ulps, ~1e-7 each), and the epoch's ELBO within 1e-6 relative."""
    two, one = (load_checkpoint(runs / "steps" / n / CHECKPOINT) for n in ("two", "one"))
    assert two.state.world_size == 2 and one.state.world_size == 1
    assert two.state.torch_rng.shape[0] == 2  # each rank's stream is kept
    assert two.modules.keys() == one.modules.keys()
    for name, value in one.modules.items():
        assert torch.allclose(two.modules[name], value, rtol=0, atol=1e-6), name
    for pid, slots in one.optimizer["state"].items():
        m1, m2 = slots["exp_avg"], two.optimizer["state"][pid]["exp_avg"]
        assert float((m2 - m1).abs().max()) <= 1e-5 * float(m1.abs().max()), pid
    t1, t2 = one.state.history[0].train_elbo, two.state.history[0].train_elbo
    assert math.isclose(t1, t2, rel_tol=1e-6), (t1, t2)
    assert sorted(p.name for p in (runs / "steps" / "two").iterdir()) == \
        sorted(p.name for p in (runs / "steps" / "one").iterdir())  # rank 0 wrote the same files


def test_two_ranks_fit_as_well_as_one(runs):
    """The final validation ELBO of 2 ranks is within 4 standard errors of one process's:
    the standard error of a mean over the validation images (per-image ELBO spread / √N,
    from the single-process model), the two fits counted as independent (√2)."""
    rows = {n: [json.loads(line) for line in (runs / "vae" / n / METRICS).read_text().splitlines()]
            for n in ("one", "two")}
    assert [r["epoch"] for r in rows["two"]] == list(range(1, 9))
    v1, v2 = rows["one"][-1]["val_elbo"], rows["two"][-1]["val_elbo"]
    se = _val_elbo_stderr(runs / "vae" / "one")
    assert abs(v1 - v2) < 4 * math.sqrt(2) * se, (v1, v2, se)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS).read_text().splitlines()]


def test_two_ranks_resume_exactly(runs):
    """4 epochs, then --resume to 8, by 2 ranks: the same ELBOs as 8 epochs in one go (each
    rank's random stream came back from the checkpoint)."""
    keys = ("epoch", "train_elbo", "val_elbo", "beta")
    straight, resumed = (_metrics(runs / "vae" / n) for n in ("two", "resumed"))
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


def test_every_rank_is_refused_a_locked_folder_and_goes_on(runs):
    """Rank 0 meets the lock and every rank exits 2 (none waits for a peer); the ranks then
    train the next run together (the 2-rank fits above ran in the same processes)."""
    codes = {int(k): v for k, v in json.loads((runs / "codes.json").read_text()).items()}
    assert codes == {0: [0, 0, 0, 0, 2, 0], 1: [0, 0, 0, 0, 2, 0]}
    assert sorted(p.name for p in (runs / "steps" / "locked").iterdir()) == [LOCK_FILE]


def test_resume_with_another_number_of_processes_is_refused(runs, capsys):
    run = runs / "vae" / "two"
    code, err = run_cli(["train", "--resume", str(run), "--epochs", "9", "--no-progress"], capsys)
    assert code == 2 and "trained by 2 process(es) and this resume has 1" in err, err
    assert "torchrun --nproc-per-node 2" in err
    assert len((run / METRICS).read_text().splitlines()) == 8  # nothing changed


def _val_elbo_stderr(run: Path) -> float:
    """Standard error of the mean single-sample ELBO over the run's validation images."""
    import pyro

    from pyro_vae.runs.folders import load_run
    loaded = load_run(run)
    x = loaded.data.eval_split("val", seed=loaded.config.train.seed)
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        per_image = torch.stack([-elbo.differentiable_loss(loaded.model, loaded.guide, x[i:i + 1])
                                 for i in range(len(x))])
    return float(per_image.std() / math.sqrt(len(x)))


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a child with RANK in its environment)."""
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit() or int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if f"RANK={rank}".encode() in (p / "environ").read_bytes().split(b"\0"):
                return int(p.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


def _lose_rank_one(argv: list[str], folder: Path) -> None:
    """``torchrun --nproc-per-node 2 -m pyro_vae ARGV`` with rank 1 killed (SIGKILL, by the
    crash-test hook) at its 40th step, mid-epoch 4; what the job did, in ``folder/lost.json``:
    its exit status, stderr, the checkpoint then, and the seconds from rank 1's death to
    the job's end."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "pyro_vae",
           *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYRO_VAE_FAULT_POINT="fit/step:40@1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, died = None, None
    while proc.poll() is None and died is None:
        victim = victim or _rank_pid(proc.pid, 1)
        if victim is not None and _gone(victim):
            died = time.monotonic()
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    run = Path(argv[argv.index("--out") + 1]) / argv[argv.index("--name") + 1]
    state = load_checkpoint(run / CHECKPOINT).state
    (folder / "lost.json").write_text(json.dumps({
        "code": proc.returncode, "stderr": err, "epoch": state.epoch, "step": state.step,
        "history": [r.epoch for r in state.history], "metrics": [r["epoch"] for r in _metrics(run)],
        "stop_s": None if died is None else time.monotonic() - died}))


def test_a_lost_rank_stops_the_job_in_seconds_and_resumes_exactly(runs):
    """Rank 1 is killed mid-epoch 4 of 8: rank 0 stops within seconds (not the process
    group's timeout) with one line naming rank 1; it writes the last finished epoch (the
    checkpoint was due only after epoch 1), and a resume by 2 ranks ends exactly where the
    uninterrupted 2-rank fit (``vae/two``) does: every metrics line, and the parameters bit
    for bit."""
    lost = json.loads((runs / "lost.json").read_text())
    run, err = runs / "vae" / "lost", lost["stderr"]
    print(f"the job stopped {lost['stop_s']:.2f} s after rank 1 died")
    assert lost["stop_s"] is not None and lost["stop_s"] < 20, err[-3000:]
    assert lost["code"] != 0
    ours = [line for line in err.splitlines() if line.startswith("pyro-vae train: error:")]
    assert len(ours) == 1 and "rank 1 of 2 was lost" in ours[0], err[-3000:]
    assert f"--resume {run}" in ours[0]
    assert not re.search(r'File ".*pyro_vae/', err), err[-3000:]  # no traceback of ours
    assert (lost["epoch"], lost["step"]) == (3, 0)  # 12 steps an epoch: step 40 is in epoch 4
    assert lost["metrics"] == lost["history"] == [1, 2, 3]
    keys = ("epoch", "train_elbo", "val_elbo", "beta", "lr")
    straight = runs / "vae" / "two"
    assert [[r[k] for k in keys] for r in _metrics(run)] == \
        [[r[k] for k in keys] for r in _metrics(straight)]
    mine, theirs = (load_checkpoint(r / CHECKPOINT).modules for r in (run, straight))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
