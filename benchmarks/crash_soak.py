"""Crash soak: SIGKILL a seeded fit at random moments and inside its writes, resume it after
every kill, and check the run folder each time (issue 26, item 1).

Three modes, each with trials that run one command from start to finish through as many
kills as land on it:

- ``fit``: ``pyro-vae train`` on the digits (a tiny network), resumed with ``train --resume``
  (or started again when the kill came before its first checkpoint);
- ``evaluate``: ``pyro-vae evaluate`` of a finished run, run again after each kill (it
  continues from the chunks it kept);
- ``torchrun``: the fit by 2 gloo ranks on 127.0.0.1 under ``torchrun``, killed whole (the
  process group), by one rank's death, or at a point on one rank.

Each attempt is killed with SIGKILL either after a time drawn uniformly over the
uninterrupted command's wall time, or at a named point (pyro_vae/faults.py:
``PYRO_VAE_FAULT_POINT``, drawn from the points the uninterrupted command passed, and the
how-many-th time). After every kill the folder must load, metrics.jsonl must hold each
finished epoch once and agree with the checkpoint (a torn last line aside, which the resume
drops), and the checkpoint's epochs must be the uninterrupted run's; when the command at
last exits 0, the parameters, Adam's state, the random states, best.safetensors and every
metrics line must equal the uninterrupted run's exactly (the evaluation's numbers likewise).
Any difference is a loss.

``fit`` and ``evaluate`` run the CLI in children forked from this process, which has
imported pyro-vae once (``--launch spawn``: a fresh ``python -m pyro_vae`` each time, slower).
The soak keeps its state in ``OUT/state.json`` and continues when run again with the same
``--out``; the table goes to stdout and, with the details, to ``OUT/soak.json``.

    python benchmarks/crash_soak.py --kills 10 --out /tmp/soak          # a short soak
    nice -n 19 python benchmarks/crash_soak.py --kills 200 --evaluate-kills 30 \\
        --torchrun-kills 30 --out /tmp/soak-long
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import soak_checks as checks

FIT = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "128",
       "--epochs", "24", "--device", "cpu", "--seed", "3"]
EVALUATE = ["--samples", "64", "--points", "24", "--hold-points", "4", "--point-chunk", "4"]
PARTIAL = "evaluation.partial"
MODES = ("fit", "evaluate", "torchrun")
FRESH_ONLY = re.compile(r"^folder/")  # points only a new run folder passes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="kills of the fit (mode fit)")
    p.add_argument("--evaluate-kills", type=int, default=2, help="kills of evaluate")
    p.add_argument("--torchrun-kills", type=int, default=0, help="kills of the 2-rank fit")
    p.add_argument("--out", type=Path, required=True, help="the soak's folder (resumable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments and points")
    p.add_argument("--points", type=float, default=0.5,
                   help="share of the kills made at named points (the rest at random times)")
    p.add_argument("--checkpoint-every", type=float, default=0.3,
                   help="train's --checkpoint-every in the trials (seconds)")
    p.add_argument("--launch", choices=("fork", "spawn"), default="fork")
    p.add_argument("--train-args", default=" ".join(FIT), help="the fit's train flags")
    p.add_argument("--json", type=Path, default=None, help="default OUT/soak.json")
    return p.parse_args(argv)


@dataclass
class Outcome:
    """How one attempt ended: its exit status (None when killed), what killed it, how long
    it ran, and what it printed on stderr."""

    code: int | None
    kill: str | None
    seconds: float
    stderr: str
    stop_s: float | None = None


def exit_status(status: int) -> int | None:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


class Launcher:
    """Starts the CLI (forked from this process, or spawned) and the 2-rank torchrun job,
    and kills them."""

    def __init__(self, mode: str, logs: Path) -> None:
        self.mode, self.logs = mode, logs
        logs.mkdir(parents=True, exist_ok=True)
        if mode == "fork":
            import sklearn.datasets  # noqa: F401 - the digits' loader
            import torch
            import torch._dynamo  # noqa: F401 - what the fused Adam imports on first use

            import pyro_vae.cli.evaluate  # noqa: F401 - imported once, before any fork
            import pyro_vae.cli.train  # noqa: F401
            import pyro_vae.figures  # noqa: F401

            torch.set_num_threads(1)

    def start(self, argv: list[str], env: dict[str, str], torchrun: bool = False):
        err = open(self.logs / "stderr.txt", "w+")
        full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
        if torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m",
                   "pyro_vae", *argv]
            return subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True), err
        if self.mode == "spawn":
            return subprocess.Popen([sys.executable, "-m", "pyro_vae", *argv], env=full_env,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True), err
        pid = os.fork()
        if pid == 0:  # the child: the CLI, then out without running the parent's cleanup
            code = 99
            try:
                os.setsid()  # its own process group, killed whole like a spawned command
                os.dup2(err.fileno(), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                os.environ.clear()
                os.environ.update(full_env)
                from pyro_vae.cli import main
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported as the child's stderr
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        return pid, err

    def run(self, argv: list[str], env: dict[str, str], kill_at: float | None,
            limit: float, torchrun: bool = False, rank_kill: bool = False) -> Outcome:
        """Run once; SIGKILL it (the whole process group) ``kill_at`` seconds after the
        start, or with ``rank_kill`` one rank of the torchrun job only."""
        proc, err = self.start(argv, env, torchrun)
        start, killed, died, victim = time.monotonic(), None, None, None
        pid = proc if isinstance(proc, int) else proc.pid
        armed_rank = env.get("PYRO_VAE_FAULT_POINT", "").rpartition("@")[2] if torchrun else ""
        while True:
            code = self._poll(proc)
            now = time.monotonic() - start
            if code is not False:
                break
            if armed_rank and died is None:  # the rank an armed point is to kill
                victim = victim or rank_pids(pid).get(int(armed_rank))
                if victim is not None and gone(victim):
                    died = now
            if killed is None and kill_at is not None and now >= kill_at:
                killed, kill_at = self._kill(pid, rank_kill, now)
                died = now if killed and killed.startswith("rank") else died
            if now > limit:
                kill_group(pid)
                killed = "hang"
            time.sleep(0.005)
        seconds = time.monotonic() - start
        kill_group(pid)  # anything left behind (a rank, a compile worker)
        err.seek(0)
        text = err.read()
        err.close()
        if killed is None and (code is None or died is not None and code != 0):
            killed = "point"  # it killed itself (or one rank did) at the armed point
        elif killed is None:
            died = None  # the armed rank was not killed: it ended as it should
        return Outcome(code, killed, seconds, text, None if died is None else seconds - died)

    @staticmethod
    def _kill(pid: int, rank_kill: bool, now: float) -> tuple[str | None, float | None]:
        """SIGKILL the command (its process group), or with ``rank_kill`` one rank of the
        torchrun job; (what was killed, None), or (None, when to try again)."""
        if not rank_kill:
            kill_group(pid)
            return "random", None
        ranks = rank_pids(pid)
        if not ranks:
            return None, now + 0.2  # the ranks are not up yet: a little later
        rank = random.choice(sorted(ranks))
        with contextlib.suppress(ProcessLookupError):
            os.kill(ranks[rank], signal.SIGKILL)
        return f"rank {rank}", None

    @staticmethod
    def _poll(proc) -> int | None | bool:
        """The exit status (None for a signal), or False while it runs."""
        if isinstance(proc, int):
            pid, status = os.waitpid(proc, os.WNOHANG)
            return False if pid == 0 else exit_status(status)
        code = proc.poll()
        return False if code is None else (code if code >= 0 else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (the command and any process it started)."""
    for kill in (os.killpg, os.kill):  # os.kill: a fork that has not made its group yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's workers (its children with RANK in their environment)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(e.split("=", 1) for e in (p / "environ").read_bytes().decode().split("\0")
                       if "=" in e)
            out[int(env["RANK"])] = int(p.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return out


def gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


def kind(name: str) -> str:
    """What a point writes: its file, ``figures`` for any PNG, ``step``, ``folder``."""
    head = name.split("/")[0]
    return ("figures" if head.endswith(".png") else "step" if name == "fit/step"
            else "folder" if head == "folder" else head)


def generalize(name: str) -> str:
    """A point's name with its numbers as wildcards (``iwae-0003.npz/synced`` → ``iwae-*.npz/
    synced``): the units of a computation are one point."""
    return re.sub(r"\d+", "*", name)


def new_counts() -> dict:
    return {"kills": 0, "random": 0, "point": 0, "rank": 0, "resumes": 0, "restarts": 0,
            "trials": 0, "attempts": 0, "losses": 0, "points": {}, "stop_s": [],
            "lost_lines": {}, "untidy": 0, "failures": [], "trial": 0}


class Soak:
    """The soak's state (``OUT/state.json``) and its modes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "state.json"
        settings = {"train_args": args.train_args, "checkpoint_every": args.checkpoint_every,
                    "launch": args.launch, "seed": args.seed}
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        if self.state.get("settings") != settings:  # another soak: start afresh
            for mode in MODES:
                shutil.rmtree(self.out / mode, ignore_errors=True)
            self.state = {"settings": settings, "modes": {m: new_counts() for m in MODES},
                          "references": {}, "seconds": 0.0}
        self.launcher = Launcher(args.launch, self.out / "logs")
        self.train = args.train_args.split()
        self.every = ["--checkpoint-every", str(args.checkpoint_every), "--no-progress"]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        os.replace(tmp, self.path)

    # -- the uninterrupted commands ------------------------------------------------------

    def reference(self, mode: str) -> dict:
        """The uninterrupted command of ``mode``: its folder, wall time and the points it
        passed (``{generalized name: times}``)."""
        if mode in self.state["references"]:
            return self.state["references"][mode]
        folder = self.out / mode / "reference"
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        log = self.out / mode / "points.log"
        log.unlink(missing_ok=True)
        if mode == "evaluate":
            self._evaluable(folder)
        outcome = self.launcher.run(self.argv(mode, folder, fresh=True),
                                    {"PYRO_VAE_FAULT_LOG": str(log)}, None, 3600,
                                    torchrun=mode == "torchrun")
        if outcome.code != 0:
            raise SystemExit(f"the uninterrupted {mode} failed: {outcome.stderr[-3000:]}")
        points: dict[str, int] = {}
        for name in log.read_text().splitlines():
            points[generalize(name)] = points.get(generalize(name), 0) + 1
        if mode == "torchrun":  # fit/step is passed by both ranks
            points["fit/step"] = max(1, points.get("fit/step", 2) // 2)
        ref = {"folder": str(folder), "seconds": outcome.seconds, "points": points}
        if mode != "evaluate":
            ref["rows"] = checks.rows(json.loads(line) for line in
                                      (folder / "metrics.jsonl").read_text().splitlines())
        self.state["references"][mode] = ref
        self.save()
        return ref

    def _evaluable(self, folder: Path) -> None:
        """A finished run to evaluate (the fit's uninterrupted run), copied to ``folder``."""
        fit = Path(self.reference("fit")["folder"])
        shutil.copytree(fit, folder, ignore=shutil.ignore_patterns(".writer.lock"))

    def argv(self, mode: str, folder: Path, fresh: bool) -> list[str]:
        if mode == "evaluate":
            return ["evaluate", str(folder), *EVALUATE, "--no-progress"]
        if fresh:
            return ["train", *self.train, "--out", str(folder.parent), "--name", folder.name,
                    *self.every]
        return ["train", "--resume", str(folder), *self.every]

    # -- the trials ----------------------------------------------------------------------

    def run_mode(self, mode: str, kills: int) -> None:
        counts = self.state["modes"][mode]
        if counts["kills"] >= kills and not counts.get("after_kill"):
            return
        ref = self.reference(mode)
        while counts["kills"] < kills or counts.get("after_kill"):
            # Past the last kill, the trial it hit is resumed to its end without one.
            folder = self.out / mode / f"trial-{counts['trial']}"
            if not folder.exists() and mode == "evaluate":
                self._evaluable(folder)
            self.attempt(mode, folder, ref, counts, armed=counts["kills"] < kills)
            self.save()

    def attempt(self, mode: str, folder: Path, ref: dict, counts: dict, armed: bool) -> None:
        rng = random.Random(f"{self.args.seed}-{mode}-{counts['attempts']}")
        counts["attempts"] += 1
        fresh = mode != "evaluate" and not (folder / "checkpoint.safetensors").exists()
        if counts.pop("after_kill", False):  # from its checkpoint (or kept chunks), or anew
            kept = (folder / PARTIAL).exists() if mode == "evaluate" else not fresh
            counts["resumes" if kept else "restarts"] += 1
        env, kill_at, rank_kill = {}, None, False
        if not armed:
            pass
        elif rng.random() < self.args.points:
            env["PYRO_VAE_FAULT_POINT"] = self.point(ref["points"], fresh, rng, mode == "torchrun",
                                                     self.left(mode, folder, ref, fresh))
        else:
            kill_at = rng.uniform(0, ref["seconds"])
            rank_kill = mode == "torchrun" and rng.random() < 0.5
        outcome = self.launcher.run(self.argv(mode, folder, fresh), env, kill_at,
                                    max(120.0, 20 * ref["seconds"]), mode == "torchrun",
                                    rank_kill)
        counts["seconds"] = counts.get("seconds", 0.0) + outcome.seconds
        if outcome.kill == "hang":
            return self.lose(mode, folder, counts, "the command hung", outcome)
        if outcome.kill is not None:
            self.killed(mode, folder, ref, counts, outcome, env.get("PYRO_VAE_FAULT_POINT"))
        elif outcome.code == 0:
            problems = (checks.evaluation_finished(folder, Path(ref["folder"]), PARTIAL)
                        if mode == "evaluate" else checks.finished(folder, Path(ref["folder"])))
            if problems:
                return self.lose(mode, folder, counts, "; ".join(problems), outcome)
            counts["trials"] += 1
            counts["trial"] += 1
            shutil.rmtree(folder, ignore_errors=True)
        else:
            self.lose(mode, folder, counts, f"exit {outcome.code} without a kill", outcome)

    def point(self, points: dict[str, int], fresh: bool, rng: random.Random,
              torchrun: bool, left: float) -> str:
        """A point and the how-many-th pass: a kind of write drawn first (each file, the
        figures together, the steps), then a point of it; for a point passed every epoch,
        a pass among those left (``left``: the share of the epochs still to run)."""
        names = sorted(n for n in points if fresh or not FRESH_ONLY.match(n))
        kinds = sorted({kind(n) for n in names})
        chosen = rng.choice(kinds)
        if torchrun and rng.random() < 0.5:  # a rank's death mid-epoch (issue 26, item 3)
            chosen = "step"
        name = rng.choice([n for n in names if kind(n) == chosen])
        times = points[name] if points[name] == 1 else max(1, round(points[name] * left))
        spec = f"{name}:{rng.randint(1, times)}"
        if torchrun:  # only rank 0 writes; every rank steps
            spec += f"@{rng.randint(0, 1) if name == 'fit/step' else 0}"
        return spec

    @staticmethod
    def left(mode: str, folder: Path, ref: dict, fresh: bool) -> float:
        """The share of the fit still to run (of the evaluation: 1)."""
        if mode == "evaluate" or fresh:
            return 1.0
        done = len(checks.metrics_lines(folder)[0])  # the checkpoint's epochs, or a few more
        return max(0.0, 1 - done / len(ref["rows"])) or 1.0

    def killed(self, mode: str, folder: Path, ref: dict, counts: dict, outcome: Outcome,
               spec: str | None) -> None:
        counts["kills"] += 1
        counts["after_kill"] = True
        kind = "rank" if outcome.kill.startswith("rank") else outcome.kill
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "point":
            name = spec.rpartition(":")[0]
            counts["points"][name] = counts["points"].get(name, 0) + 1
        if mode == "torchrun" and outcome.stop_s is not None:
            self.lost_rank(counts, outcome, spec)
        if mode == "evaluate":
            problems = checks.evaluation_after_kill(folder, PARTIAL)
        else:
            _, problems = checks.after_kill(folder, [tuple(r) for r in ref["rows"]])
        if problems:
            self.lose(mode, folder, counts, "; ".join(problems), outcome)

    def lost_rank(self, counts: dict, outcome: Outcome, spec: str | None) -> None:
        """One rank died: the time the others took to stop, their one line, no traceback."""
        counts["stop_s"].append(round(outcome.stop_s, 2))
        lines = sum("was lost" in line for line in outcome.stderr.splitlines())
        counts.setdefault("deaths", []).append(
            {"kill": spec or outcome.kill, "stop_s": round(outcome.stop_s, 2), "lines": lines,
             "code": outcome.code, "stderr": outcome.stderr[-400:] if not lines else ""})
        counts["lost_lines"][str(lines)] = counts["lost_lines"].get(str(lines), 0) + 1
        if re.search(r'File ".*pyro_vae/', outcome.stderr) or lines > 1:
            counts["untidy"] += 1
            counts["failures"].append({"what": "a rank's traceback or several lines",
                                       "stderr": outcome.stderr[-2000:]})

    def lose(self, mode: str, folder: Path, counts: dict, what: str, outcome: Outcome) -> None:
        counts["losses"] += 1
        kept = folder.with_name(f"failed-{counts['trial']}-{counts['attempts']}")
        if folder.exists():
            shutil.copytree(folder, kept, dirs_exist_ok=True)
        counts["failures"].append({"what": what, "kill": outcome.kill, "code": outcome.code,
                                   "kept": str(kept), "stderr": outcome.stderr[-2000:]})
        counts.pop("after_kill", None)
        print(f"LOSS in {mode}: {what} (kept in {kept})", file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)  # the next trial starts afresh
        counts["trial"] += 1


def table(state: dict) -> str:
    head = f"{'mode':9s} {'kills':>6s} {'random':>6s} {'points':>6s} {'rank':>5s} " \
           f"{'resumes':>7s} {'restarts':>8s} {'trials':>6s} {'losses':>6s}"
    out = [head]
    for mode, c in state["modes"].items():
        if not c["attempts"]:
            continue
        out.append(f"{mode:9s} {c['kills']:6d} {c['random']:6d} {c['point']:6d} {c['rank']:5d} "
                   f"{c['resumes']:7d} {c['restarts']:8d} {c['trials']:6d} {c['losses']:6d}")
    for mode, c in state["modes"].items():
        if c["points"]:
            out.append(f"{mode} kills per point: " + ", ".join(
                f"{name} {n}" for name, n in sorted(c["points"].items())))
        if c["stop_s"]:
            s = sorted(c["stop_s"])
            out.append(f"{mode}: a lost rank stopped the job in median {s[len(s) // 2]:.2f} s, "
                       f"max {s[-1]:.2f} s ({len(s)} deaths); lines naming it per death "
                       f"{c['lost_lines']}; untidy stops {c['untidy']}")
            mid = [d for d in c.get("deaths", []) if d["kill"].startswith("fit/step")]
            if mid:
                out.append(f"{mode}: {len(mid)} deaths at a training step, "
                           f"{sum(d['lines'] == 1 for d in mid)} named in one line, max stop "
                           f"{max(d['stop_s'] for d in mid):.2f} s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    soak = Soak(args)
    for mode, kills in zip(MODES, (args.kills, args.evaluate_kills, args.torchrun_kills)):
        soak.run_mode(mode, kills)
        soak.state["seconds"] += time.monotonic() - started
        started = time.monotonic()
        soak.save()
    text = table(soak.state)
    print(text)
    total = sum(c["losses"] for c in soak.state["modes"].values())
    print(f"losses: {total}; {soak.state['seconds']:.0f} s in all")
    (args.json or args.out / "soak.json").write_text(json.dumps(soak.state, indent=1) + "\n")
    return soak.state


if __name__ == "__main__":
    main()
