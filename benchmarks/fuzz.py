"""The long fuzz run: ``--examples N`` generated inputs spread over the boundaries of
``tests/fuzz/inputs.py`` (the CI tests' strategies and judge, with random seeds and no
shrinking), counted per boundary and outcome; every failure is kept with its input.

Each boundary runs in a process of its own, one after another (a crash of one loses only its
own counts; the counts so far are written every 25 inputs). Writes ``--out`` (JSON) and
prints a table.

    nice -n 19 python benchmarks/fuzz.py --examples 10000            # ~hours on 2 shared cores
    python benchmarks/fuzz.py --examples 200 --boundaries cli,data --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARE = {"cli": 0.4, "run-files": 0.15, "checkpoint": 0.15, "data": 0.2, "stories": 0.1}
"""How the inputs are spread over the boundaries."""
KEPT = 20
"""Failures kept per boundary and kind (all are counted)."""


def one(boundary: str, count: int, seed: int, out: Path) -> None:
    """Run ``count`` inputs of ``boundary`` in this process, writing the counts to ``out``."""
    sys.path[:0] = [str(REPO / "tests" / "fuzz"), str(REPO / "tests")]
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from harness import STATUSES, Workspace, run_case
    from inputs import BOUNDARIES

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix=f"fuzz-{boundary}-"))
    os.environ["PYRO_VAE_TRUST_FILE"] = str(root / "trusted.json")
    ws = Workspace(root)
    strategy, build = BOUNDARIES[boundary]
    report = {"boundary": boundary, "seed": seed, "inputs": 0, "outcomes": Counter(),
              "seconds": 0.0, "slowest": 0.0, "raw_warnings": 0, "failures": []}
    begin = time.perf_counter()

    def save() -> None:
        report["seconds"] = time.perf_counter() - begin
        out.write_text(json.dumps({**report, "outcomes": dict(report["outcomes"])}, indent=1))

    @hypothesis_seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(recipe=strategy())
    def body(recipe) -> None:
        with ws.scratch():
            outcome = run_case(build(recipe, ws))
        report["inputs"] += 1
        report["outcomes"][outcome.kind] += 1
        report["slowest"] = max(report["slowest"], outcome.seconds)
        report["raw_warnings"] += outcome.raw_warnings
        same = sum(f["kind"] == outcome.kind for f in report["failures"])
        if outcome.failed and same < KEPT:
            report["failures"].append({"kind": outcome.kind, "recipe": repr(recipe),
                                       "argv": outcome.case.argv, "detail": outcome.detail[-2000:]})
        if report["inputs"] % 25 == 0:
            save()

    body()
    save()
    assert set(STATUSES.values())  # the kinds that are not failures


def table(reports: list[dict]) -> str:
    from collections import Counter as C

    rows = ["| boundary | inputs | exit 0 | refused (exit 2) | diverged (exit 3) | failures | "
            "slowest |", "| --- | --- | --- | --- | --- | --- | --- |"]
    total = C()
    for r in reports:
        o = r["outcomes"]
        bad = r["inputs"] - o.get("ok", 0) - o.get("refused", 0) - o.get("diverged", 0) \
            - o.get("disk-full", 0)
        total.update({"inputs": r["inputs"], "ok": o.get("ok", 0), "refused": o.get("refused", 0),
                      "diverged": o.get("diverged", 0), "bad": bad})
        rows.append(f"| {r['boundary']} | {r['inputs']:,} | {o.get('ok', 0):,} | "
                    f"{o.get('refused', 0):,} | {o.get('diverged', 0):,} | {bad} | "
                    f"{r['slowest']:.1f} s |")
    rows.append(f"| all | {total['inputs']:,} | {total['ok']:,} | {total['refused']:,} | "
                f"{total['diverged']:,} | {total['bad']} | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1000, help="inputs in all")
    p.add_argument("--boundaries", default=",".join(SHARE), help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "fuzz.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args.one, args.count, args.seed, args.out)
    chosen = args.boundaries.split(",")
    weight = sum(SHARE[b] for b in chosen)
    reports = []
    work = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    for i, b in enumerate(chosen):
        count = max(1, round(args.examples * SHARE[b] / weight))
        part = work / f"{b}.json"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", b, "--count", str(count),
                               "--seed", str(args.seed + i), "--out", str(part)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
        report = json.loads(part.read_text()) if part.exists() else {
            "boundary": b, "inputs": 0, "outcomes": {}, "failures": [], "slowest": 0.0}
        report["process_exit"] = done.returncode
        report["wall_seconds"] = time.perf_counter() - started
        reports.append(report)
        args.out.write_text(json.dumps({"examples": args.examples, "seed": args.seed,
                                        "boundaries": reports}, indent=1) + "\n")
        print(f"{b}: {report['inputs']} inputs, {report['outcomes']} "
              f"({report['wall_seconds']:.0f} s, exit {done.returncode})", flush=True)
    print(table(reports))


if __name__ == "__main__":
    main()
