"""``pyro-vae evaluate RUN``: log p(x) of a split three ways (prior Monte Carlo, ELBO, IWAE),
with PSIS diagnostics of the guide, and with ``--method ais`` by annealed importance sampling
(``--bdmc N``: its check on simulated images); adds one entry per method to
``evaluation.json`` and draws figures in the run folder.

Each method's finished chunks are kept in ``RUN/evaluation.partial/<entry key>/`` as they are
made; the same command (or it with ``--resume``, which insists that the settings on disk are
the command's) continues from them to the numbers an uninterrupted run gives, and the folder
is removed once the entry is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from pyro_vae.cli.common import (
    COMMANDS,
    HELP,
    Command,
    UserError,
    add_checkpoint_argument,
    add_memory_argument,
    add_resume_arguments,
    add_trust_argument,
    int_list,
    positive_int,
)
from pyro_vae.cli.partials import Job, interrupted, open_jobs, progress_flag
from pyro_vae.data import GREY
from pyro_vae.evaluation import (
    ESTIMATORS,
    EVALUATION_FILE,
    STARTS,
    AISConfig,
    AISResult,
    BDMCResult,
    Evaluation,
    ais_curve,
    ais_plan,
    bdmc,
    check_ais,
    default_steps_grid,
    describe_ais_plan,
    entry_key,
    evaluate,
    evaluation_plan,
    make_entry,
    plot_k_curve,
    plot_khat,
    read_evaluations,
    record_entries,
)
from pyro_vae.memory import memory_budget
from pyro_vae.partial import state_digest, tensor_digest
from pyro_vae.runs import EVALUATION_PARTIAL as PARTIAL
from pyro_vae.runs import load_run
from pyro_vae.traces import slice_rows

SPLITS = ("test", "val", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder written by pyro-vae train")
    add_checkpoint_argument(p)
    add_trust_argument(p)
    p.add_argument("--split", choices=SPLITS, default="test", help="which images to score")
    p.add_argument("--samples", type=positive_int, default=5000,
                   help="K, draws of z per image (from the guide, and again from the prior)")
    p.add_argument("--points", type=positive_int, default=None,
                   help="score only the first N images of the split (None: all of them)")
    p.add_argument("--particle-chunk", type=positive_int, default=None,
                   help="draws per program call (None: 512 on CPU, 1024 on GPU, fewer where the "
                        "memory budget says so); memory grows with the chunk sizes, not with K "
                        "or N")
    p.add_argument("--point-chunk", type=positive_int, default=None,
                   help="images per program call (None: 8 on CPU, 256 on GPU)")
    p.add_argument("--hold-points", type=positive_int, default=256,
                   help="at most this many images' running sums are held at once (fewer where "
                        "the memory budget says so): a chunk, seeded on its own and kept on "
                        "disk when done")
    add_memory_argument(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    a = p.add_argument_group("annealed importance sampling (--method ais, --bdmc)")
    A = AISConfig()
    a.add_argument("--method", choices=("iwae", "ais"), default="iwae",
                   help="iwae: prior Monte Carlo, ELBO and IWAE with PSIS; ais: those, and AIS")
    a.add_argument("--steps", type=positive_int, default=A.steps,
                   help="T, annealing steps from the start to p(x, z)")
    a.add_argument("--chains", type=positive_int, default=A.chains,
                   help="C, independent AIS chains per image")
    a.add_argument("--ais-start", choices=sorted(STARTS), default=A.start,
                   help="where the path starts: the guide q(z | x) or the prior p(z)")
    a.add_argument("--leapfrog", type=positive_int, default=A.leapfrog,
                   help="leapfrog steps per HMC transition")
    a.add_argument("--target-accept", type=float, default=A.target_accept,
                   help="acceptance rate the step sizes are adapted to (in a separate warm-up pass)")
    a.add_argument("--warmup-steps", type=positive_int, default=A.warmup_steps,
                   help="annealing steps of the warm-up pass that adapts the step sizes")
    a.add_argument("--steps-grid", type=int_list, default=None,
                   help="the T of the AIS-against-T curve, comma-separated (default T/16, T/4, T)")
    a.add_argument("--bdmc", type=positive_int, default=None, metavar="N",
                   help="bidirectional Monte Carlo on N images simulated from the model: "
                        "AIS lower and reverse-AIS upper bounds and their gap at each T")
    a.add_argument("--ais-chunk", type=positive_int, default=None,
                   help="images annealed at once, each with its C chains: the unit AIS and "
                        "BDMC keep on disk (None: 4096 chains' worth on CPU, 65536 on GPU)")
    a.add_argument("--chain-chunk", type=positive_int, default=None,
                   help="chains of an image annealed at once (None: all C, or fewer where the "
                        "memory budget says so); the step sizes are adapted on the first group")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    add_resume_arguments(p, "evaluation in RUN/evaluation.partial")


def report(result: Evaluation, key: str, path: Path) -> None:
    """Print each estimate in nats and bits/dim, and the PSIS verdict, to stderr (the entry's
    key first), and the path of evaluation.json to stdout."""
    print(f"{key}: {result.num_points} images, K = {result.num_samples}, {result.seconds:.1f} s",
          file=sys.stderr)
    for name in ESTIMATORS:
        e = getattr(result, name)
        print(f"  {name:9s} log p(x) = {e.mean:10.3f} ± {e.stderr:.3f} nats  "
              f"= {e.bits_per_dim:.4f} ± {e.bits_per_dim_stderr:.4f} bits/dim", file=sys.stderr)
    s = result.psis.summary()
    print(f"  PSIS k̂: median {s['khat_median']:.3f}, {100 * s['fraction_khat_above']:.1f}% of images "
          f"above {s['khat_threshold']}; mean ESS/K {s['ess_fraction_mean']:.3f}", file=sys.stderr)
    if result.summed:
        print(f"  summed exactly over every value, not sampled: {', '.join(result.summed)}",
              file=sys.stderr)
    print(path)


def report_ais(curve: tuple[AISResult, ...], key: str) -> None:
    """One line per T: the AIS mean ± s.e. over images, chain s.e. and acceptance."""
    print(f"{key}:", file=sys.stderr)
    for r in curve:
        e = r.estimate
        print(f"  ais T={r.config.steps:<6d} log p(x) = {e.mean:10.3f} ± {e.stderr:.3f} nats  "
              f"= {e.bits_per_dim:.4f} ± {e.bits_per_dim_stderr:.4f} bits/dim  "
              f"(C = {r.config.chains}, {r.config.start} start, chain s.e. "
              f"{float(r.chain_stderr.mean()):.3f}, acceptance {float(r.acceptance.mean()):.2f}, "
              f"{r.seconds:.1f} s)", file=sys.stderr)


def report_bdmc(result: BDMCResult, key: str) -> None:
    """One line per T: the stochastic lower and upper bounds and their gap."""
    print(f"{key}:", file=sys.stderr)
    for i, t in enumerate(result.steps):
        lo, up, gap = result.lower[i].estimate, result.upper[i].estimate, result.gap(i)
        print(f"  bdmc T={t:<6d} lower {lo.mean:10.3f}  upper {up.mean:10.3f}  "
              f"gap {gap.mean:.3f} ± {gap.stderr:.3f} nats on {len(lo.per_point)} simulated images",
              file=sys.stderr)


def ais_config(args: argparse.Namespace) -> AISConfig:
    cfg = AISConfig(steps=args.steps, chains=args.chains, start=args.ais_start,
                    leapfrog=args.leapfrog, target_accept=args.target_accept,
                    warmup_steps=args.warmup_steps, point_chunk=args.ais_chunk,
                    chain_chunk=args.chain_chunk)
    cfg.check()
    return cfg


def steps_grid(args: argparse.Namespace) -> tuple[int, ...]:
    """The T of the AIS-against-T curve and of BDMC: --steps-grid with --steps, or the default."""
    if args.steps_grid:
        return tuple(sorted(set(args.steps_grid) | {args.steps}))
    return default_steps_grid(args.steps)


def jobs(args: argparse.Namespace, loaded, x, plan, cfg: AISConfig | None) -> list[Job]:
    """The command's parts, each with every setting its numbers depend on: IWAE always, AIS
    with --method ais, BDMC with --bdmc (on the first N images' shapes and labels); the
    IWAE chunks are ``plan``'s, the AIS ones ``cfg``'s."""
    device = loaded.device
    common = {"split": args.split, "seed": args.seed, "device": device.type,
              "parameters": state_digest(loaded.model, loaded.guide)}
    settings = [{"method": "iwae", "points": len(x), "samples": args.samples,
                 "hold_points": plan.hold, "particle_chunk": plan.particles,
                 "point_chunk": plan.points, **common, "images": tensor_digest(x)}]
    if cfg is not None:
        annealing = {"steps": cfg.steps, "chains": cfg.chains, "start": cfg.start,
                     "leapfrog": cfg.leapfrog, "target_accept": cfg.target_accept,
                     "warmup_steps": cfg.warmup_steps, "steps_grid": list(steps_grid(args)),
                     "ais_chunk": cfg.chunk(device), "chain_chunk": cfg.group}
    if args.method == "ais":
        settings.append({"method": "ais", "points": len(x), **annealing, **common,
                         "images": tensor_digest(x)})
    if args.bdmc:
        settings.append({"method": "bdmc", "points": args.bdmc, **annealing, **common,
                         "images": tensor_digest(x[:args.bdmc])})
    return [Job(entry_key(s), s, {"points": "--bdmc"} if s["method"] == "bdmc" else {})
            for s in settings]


def finished_note(path: Path, jobs_: list[Job]) -> str:
    """Where --resume finds nothing: whether evaluation.json already holds these entries."""
    entries = read_evaluations(path)["entries"]
    done = [job.key for job in jobs_ if entries.get(job.key, {}).get("settings") == job.settings]
    return f" ({EVALUATION_FILE} already holds {', '.join(done)}: it finished)" if done else ""


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.run, args.device, args.checkpoint, trust_story=args.trust_story)
    if loaded.config.data.binarize == GREY:
        raise UserError(f"{args.run} was trained with --binarize grey: its Bernoulli scores grey "
                        f"levels by their cross-entropy, which is not a log-likelihood of the "
                        f"images, so evaluate reports no log p(x) for it; train with --binarize "
                        f"dynamic (or threshold) for one")
    x = loaded.data.eval_split(args.split, seed=args.seed)
    batch = getattr(loaded.data, args.split).fields()
    if args.points is not None:
        if args.points > len(x):
            raise UserError(f"--points {args.points}: the {args.split} split has only {len(x)} images")
        x, batch = x[:args.points], slice_rows(batch, 0, args.points)
    if args.bdmc and args.bdmc > len(x):
        raise UserError(f"--bdmc {args.bdmc}: the {args.split} split has only {len(x)} images "
                        f"to shape the simulated ones")
    memory = memory_budget(loaded.device, args.memory_budget)
    cfg = ais_memory = None
    if args.method == "ais" or args.bdmc:
        # Bad settings, or a story or guide AIS cannot anneal, are refused before anything runs.
        check_ais(loaded.model, loaded.guide, x, ais_config(args), batch)
        cfg, ais_memory = ais_plan(loaded.model, loaded.guide, x, ais_config(args), memory, batch)
    out, root = loaded.path / EVALUATION_FILE, loaded.path / PARTIAL
    read_evaluations(out)  # an unreadable evaluation.json is refused before the work, not after
    # Chunks that fit the memory budget, or one line saying that one draw for one image does not.
    plan = evaluation_plan(loaded.model, loaded.guide, x, args.samples, memory,
                           args.particle_chunk, args.point_chunk, args.hold_points, batch=batch)
    parts = jobs(args, loaded, x, plan, cfg)
    open_jobs(parts, root, args.resume, "evaluate", finished_note(out, parts))
    try:
        entries, result, curve, sandwich = compute(args, loaded, x, batch, parts, plan,
                                                   cfg, ais_memory)
    except KeyboardInterrupt:
        return interrupted("evaluate", root)
    # Which checkpoint each entry scored (its epoch and digest): a resume moves stale ones aside.
    record_entries(out, [{**entry, "scored": loaded.scored} for entry in entries])
    shown = " and ".join(job.key for job in parts if job.settings["method"] != "bdmc")
    plot_k_curve(result.curve, loaded.path / "evaluation_k_curve.png", ais=curve, entry=shown)
    plot_khat(result.psis, loaded.path / "evaluation_khat.png", entry=parts[0].key)
    report(result, parts[0].key, out)
    if curve:
        report_ais(curve, parts[1].key)
    if sandwich is not None:
        report_bdmc(sandwich, parts[-1].key)
    print(f"  {plan.describe()}", file=sys.stderr)
    if ais_memory is not None:
        print(f"  {describe_ais_plan(ais_memory, cfg.chains)}", file=sys.stderr)
    for job in parts:  # their entries are written: the chunks are no longer needed
        job.partial.remove()
    with contextlib.suppress(OSError):
        root.rmdir()  # unless another evaluation's partial results are still there
    return 0


def compute(args: argparse.Namespace, loaded, x, batch, parts: list[Job], plan,
            cfg: AISConfig | None, ais_memory: dict | None):
    """Each part's result (from its partial results where they hold it) and its entry;
    the AIS and BDMC entries say how they were chunked (``ais_memory``)."""
    progress = progress_flag(args)
    by_method = {job.settings["method"]: job for job in parts}
    iwae = by_method["iwae"]
    result = evaluate(loaded.model, loaded.guide, x, num_samples=args.samples, plan=plan,
                      batch=batch, seed=args.seed, progress=progress, partial=iwae.partial)
    entries = [make_entry("iwae", iwae.settings, result.summary())]
    curve: tuple[AISResult, ...] = ()
    sandwich = None
    if "ais" in by_method:
        job = by_method["ais"]
        curve = ais_curve(loaded.model, loaded.guide, x, cfg, steps_grid(args), seed=args.seed,
                          batch=batch, partial=job.partial, progress=progress)
        block = {**curve[-1].summary(),
                 "curve": {"steps": [r.config.steps for r in curve],
                           "mean": [r.estimate.mean for r in curve],
                           "stderr": [r.estimate.stderr for r in curve]},
                 "memory": ais_memory}
        entries.append(make_entry("ais", job.settings, block))
    if "bdmc" in by_method:
        job = by_method["bdmc"]
        sandwich = bdmc(loaded.model, loaded.guide, x[:args.bdmc], cfg, steps_grid(args),
                        seed=args.seed, batch=slice_rows(batch, 0, args.bdmc),
                        partial=job.partial, progress=progress)
        entries.append(make_entry("bdmc", job.settings, {**sandwich.summary(),
                                                          "memory": ais_memory}))
    return entries, result, curve, sandwich


COMMANDS.register("evaluate")(Command(HELP["evaluate"], add_arguments, run))
