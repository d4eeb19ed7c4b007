"""``pyro-vae train``: fit a VAE and fill a run folder; ``--resume RUN`` continues one."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

from pyro_vae import distributed
from pyro_vae.cli.common import (
    COMMANDS,
    EXIT_DISK_FULL,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_LOST_RANK,
    EXIT_USAGE,
    HELP,
    Command,
    UserError,
    add_trust_argument,
    choice_of,
    float_list,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    user_errors,
)
from pyro_vae.cli.options import add_option_arguments, options_from_args
from pyro_vae.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    StoryConfig,
    TrackConfig,
    TrainConfig,
)
from pyro_vae.data import BINARIZE_MODES, DATASETS, STREAM_MODES
from pyro_vae.files import DiskFullError
from pyro_vae.guides import ENCODERS, GUIDES
from pyro_vae.infer import INITS, OBJECTIVES, PRECISIONS, SCHEDULES, TRAIN_PARTS
from pyro_vae.models import ACTIVATIONS, DECODERS, LIKELIHOODS, PRIORS
from pyro_vae.runs import (
    CHECKPOINT_EVERY,
    LOGGERS,
    StopFlag,
    TrainResult,
    resume_run,
    stop_on_signals,
    train_run,
)
from pyro_vae.state import DivergenceError
from pyro_vae.stories import STORIES, default_objective, is_named, parse_arg, parse_spec

M, D, T = ModelConfig(), DataConfig(), TrainConfig()


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=D.name, help=f"dataset name ({', '.join(DATASETS)}), the "
                   f"path of an .npz/.npy file of images ([N, H, W] or [N, C, H, W]), or a "
                   f"folder of image files (PNG, JPEG) of one size")
    g.add_argument("--data-root", default=None, help="folder holding torchvision datasets "
                   "(default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae/data)")
    g.add_argument("--download", action="store_true", help="let torchvision download missing files")
    g.add_argument("--binarize", default=D.binarize, choices=BINARIZE_MODES,
                   help="binarization for Bernoulli likelihoods (auto: dynamic for bernoulli); "
                        "dequantize: 8-bit pixels spread over their bins, (k + u)/256, for a "
                        "Gaussian's bits/dim (with --levels 256); grey: no binarization, the "
                        "Bernoulli scores grey levels by its cross-entropy (Pyro's ss-VAE "
                        "recipe; not a log-likelihood: evaluate refuses such a run)")
    # Checked by streams.resolve_stream (one line, exit 2), not by argparse's choices, whose
    # refusal prints the whole usage above it.
    g.add_argument("--stream", default=D.stream, metavar="{" + ",".join(STREAM_MODES) + "}",
                   help="a .npy file's or image folder's training images: read batch by batch "
                        "from the file (on), held in memory (off), or auto: on when as float32 "
                        "they exceed a quarter of the available memory; the choice is printed "
                        "and kept in config.json (--resume keeps it)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and guide")
    g.add_argument("--latent-dim", type=positive_int, default=M.latent_dim, help="dimension of z")
    g.add_argument("--hidden", type=int_list, default=M.hidden_sizes,
                   help="encoder hidden sizes, comma-separated; the MLP decoder mirrors them "
                        "unless --decoder-mlp-hidden sets its own")
    g.add_argument("--activation", type=choice_of(ACTIVATIONS), default=M.activation,
                   help=f"hidden nonlinearity: {', '.join(ACTIVATIONS)}")
    g.add_argument("--likelihood", type=choice_of(LIKELIHOODS), default=M.likelihood,
                   help=f"p(x | z): {', '.join(LIKELIHOODS)}")
    g.add_argument("--prior", type=choice_of(PRIORS), default=M.prior, help=f"p(z): {', '.join(PRIORS)}")
    g.add_argument("--decoder", type=choice_of(DECODERS), default=M.decoder,
                   help=f"f_θ(z): {', '.join(DECODERS)} (linear with a Gaussian likelihood is pPCA)")
    g.add_argument("--encoder", type=choice_of(ENCODERS), default=M.encoder,
                   help=f"the guide's encoder body: {', '.join(ENCODERS)} (conv and resnet read "
                        f"[C, H, W] images; the decoder need not match)")
    g.add_argument("--guide", type=guide_choice, default=None,
                   help=f"q(z | x): {', '.join(GUIDES)} for the built-in VAE (default {M.guide}); "
                        f"with --model: auto (the default, an amortized Gaussian per latent site) "
                        f"or FILE.py:NAME")


def add_story_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own story (README: Write your own story)")
    g.add_argument("--model", default=None, metavar="STORY",
                   help=f"a shipped story ({', '.join(STORIES)}: labels as part of the story) or "
                        f"FILE.py:NAME, the story NAME in FILE (a function model(x, ...) or a "
                        f"factory taking data_dim, image_shape and --model-arg values), instead "
                        f"of the built-in VAE; a file is copied into the run folder")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument for the story's (and guide's) factory; repeatable")
    g.add_argument("--labels", type=positive_int, default=None, metavar="N",
                   help="for a partly labelled story (m2): keep N training labels, balanced "
                        "across classes and chosen by --seed, and hide the rest (default: keep "
                        "all); validation and test labels are always hidden from the story")
    g.add_argument("--labelled-every", type=int, default=None, metavar="K",
                   help="for a partly labelled story: give the kept labels batches of their "
                        "own, one at every K-th step (K >= 2; Pyro's ss-VAE example: K = "
                        "N // labels, one pass over the labels per epoch), the other rows once "
                        "per epoch in the other steps (default: labelled and unlabelled rows "
                        "share shuffled batches)")
    g.add_argument("--map-site", default="", metavar="SITE",
                   help="the latent site the latent-map figure shows (default: the guide's "
                        "first; PCA above 2-D)")


def guide_choice(text: str) -> str:
    """A registered guide name, ``auto``, or ``FILE.py:NAME`` (a ``FILE.py`` passes too, so
    that :func:`parse_spec` asks for its ``:NAME`` rather than the registry naming guides)."""
    if text == "auto" or ":" in text or text.endswith(".py"):
        return text
    return choice_of(GUIDES)(text)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fitting")
    g.add_argument("--objective", type=choice_of(OBJECTIVES), default=None,
                   help=f"training loss: {', '.join(OBJECTIVES)} (default {T.objective}, which "
                        f"becomes enum for a story that marks a site for enumeration, e.g. m2)")
    g.add_argument("--particles", type=positive_int, default=T.particles,
                   help="samples of z per image in the objective")
    g.add_argument("--beta", type=non_negative_float, default=T.beta, help="weight of the latent (KL) term")
    g.add_argument("--kl-warmup", type=non_negative_int, default=T.kl_warmup,
                   help="epochs over which β rises linearly from 0")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help=f"passes over the training images (default {T.epochs}, or the length "
                        f"of a schedule that has one: burda's 3,280; with --resume, the new "
                        f"total)")
    g.add_argument("--batch-size", type=positive_int, default=T.batch_size, help="images per step")
    g.add_argument("--lr", type=positive_float, default=T.lr,
                   help="Adam's base learning rate (what --lr-schedule starts from)")
    # Names and ranges are checked with the rest of the settings (one line, exit 2).
    g.add_argument("--lr-schedule", default=T.lr_schedule, metavar="NAME",
                   help=f"the rate of each epoch: {', '.join(SCHEDULES)} (see README)")
    g.add_argument("--adam-betas", type=float_list, default=T.adam_betas, metavar="B1,B2",
                   help="Adam's decay rates of its running means, each in [0, 1)")
    g.add_argument("--adam-eps", type=float, default=T.adam_eps, metavar="EPS",
                   help="Adam's eps, added to the root of its second moment")
    g.add_argument("--init", default=T.init, metavar="NAME",
                   help=f"how the layers start: {', '.join(INITS)} (default: as torch built "
                        f"them; normal: N(0, std²) weights and zero biases; glorot: "
                        f"U(±gain·√(6/(fan_in+fan_out))) weights and zero biases)")
    g.add_argument("--clip-norm", type=positive_float, default=None, help="clip the gradient norm")
    g.add_argument("--early-stopping", type=positive_int, default=None,
                   help="stop after this many epochs without a better validation ELBO")
    g.add_argument("--seed", type=int, default=T.seed, help="random seed")
    g.add_argument("--device", default=T.device, help="cpu, cuda or auto")
    g.add_argument("--precision", type=choice_of(PRECISIONS), default=T.precision,
                   help=f"matrix products of the training steps: {', '.join(PRECISIONS)} (default "
                        f"{T.precision}; evaluation is always fp32)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    add_model_arguments(p)
    add_option_arguments(p)
    add_story_arguments(p)
    add_train_arguments(p)
    add_option_arguments(p, TRAIN_PARTS, "settings of the learning-rate schedule and the "
                                         "initialization (each applies when chosen)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("runs"), help="folder that holds run folders")
    g.add_argument("--name", default=None, help="run folder name (default: time, data and parts)")
    g.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue the run in this folder from its checkpoint")
    add_trust_argument(g)  # with --resume
    g.add_argument("--checkpoint-every", type=non_negative_float, default=CHECKPOINT_EVERY,
                   metavar="SECONDS",
                   help="write the checkpoint after the first epoch, then after the first epoch "
                        "that ends this many seconds after the last write (0: every epoch), and "
                        "always at the end, on Ctrl-C/SIGTERM and when the fit fails; "
                        "metrics.jsonl gets every epoch at once (a resume after kill -9 cuts it "
                        "back to the checkpoint's epochs)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_tracking_arguments(p)
    p.set_defaults(actions=p._actions)  # --resume checks which of them were given


def add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment tracking (docs/tracking.md)")
    g.add_argument("--log", action="append", default=[], type=choice_of(LOGGERS), metavar="NAME",
                   help=f"also send each epoch's metrics.jsonl line, the figures and the config "
                        f"to a tracker: {', '.join(LOGGERS)} (repeatable; tensorboard and "
                        f"mlflow need pip install -e \".[track]\"); kept in config.json, so "
                        f"--resume continues the same tracker runs (and may add one)")
    g.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="the MLflow tracking URI for --log mlflow (default: the file store "
                        "RUN/mlruns)")


def story_from_args(args: argparse.Namespace) -> StoryConfig:
    """The ``--model``/``--guide``/``--model-arg`` flags as a :class:`StoryConfig`."""
    story_args = dict(parse_arg(text) for text in args.model_arg)
    if args.model is None:
        if args.guide is not None and args.guide not in GUIDES:
            raise UserError(f"--guide {args.guide}: auto and guide files need a story file "
                            f"(--model FILE.py:NAME); the built-in VAE takes "
                            f"{', '.join(GUIDES)}")
        if story_args:
            raise UserError("--model-arg is for a story file's factory; give --model FILE.py:NAME")
        return StoryConfig(map_site=args.map_site)
    if is_named(args.model):
        STORIES.lookup(args.model)
        guide = "auto" if args.guide == "auto" else "story"
        if args.guide not in (None, "auto") and args.guide not in GUIDES:
            raise UserError(f"--guide {args.guide}: the {args.model} story takes its own guide "
                            f"(built with one of {', '.join(GUIDES)}) or auto")
        return StoryConfig(model=args.model, guide=guide, args=story_args, map_site=args.map_site)
    parse_spec(args.model, "--model")
    guide = args.guide or "auto"
    if guide != "auto" and guide in GUIDES:
        raise UserError(f"--guide {guide}: the registered guides are built for the built-in "
                        f"VAE's single site z; a story file takes auto or FILE.py:NAME")
    if guide != "auto":
        parse_spec(guide, "--guide")
    return StoryConfig(model=args.model, guide=guide, args=story_args, map_site=args.map_site)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    story = story_from_args(args)
    guide = args.guide if args.guide in GUIDES else M.guide
    chosen = dict(prior=args.prior, likelihood=args.likelihood, decoder=args.decoder,
                  encoder=args.encoder, guide=guide)
    model = ModelConfig(latent_dim=args.latent_dim, hidden_sizes=tuple(args.hidden),
                        activation=args.activation, **chosen,
                        options=options_from_args(args, chosen))
    data = DataConfig(name=args.data, root=args.data_root, download=args.download,
                      binarize=args.binarize, labels=args.labels, stream=args.stream)
    fit_chosen = dict(lr_schedule=args.lr_schedule, init=args.init)
    fit_options = options_from_args(args, fit_chosen, TRAIN_PARTS)  # unknown names refused
    epochs = args.epochs or SCHEDULES[args.lr_schedule].epochs or T.epochs
    train = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                        clip_norm=args.clip_norm, seed=args.seed, device=args.device,
                        objective=args.objective or default_objective(args.model) or T.objective,
                        particles=args.particles, beta=args.beta,
                        kl_warmup=args.kl_warmup, early_stopping=args.early_stopping,
                        precision=args.precision, **fit_chosen, options=fit_options,
                        adam_betas=tuple(args.adam_betas), adam_eps=args.adam_eps,
                        labelled_every=args.labelled_every)
    track = TrackConfig(loggers=tuple(dict.fromkeys(args.log)), mlflow_uri=args.mlflow_uri or "")
    return RunConfig(model=model, data=data, train=train, story=story, track=track)


# Flags that --resume accepts besides the run: where and how it runs, not what it fits.
RESUME_FLAGS = {"resume", "epochs", "lr", "clip_norm", "early_stopping", "device", "no_progress",
                "trust_story", "log", "mlflow_uri", "checkpoint_every"}


def given_flags(parser_actions, argv: list[str]) -> set[str]:
    """The ``dest`` of every option spelled out in ``argv``."""
    given = set()
    for action in parser_actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                given.add(action.dest)
    return given


def resume_changes(args: argparse.Namespace, given: set[str]) -> dict:
    """The training settings given with ``--resume``; any other flag is refused."""
    refused = sorted(given - RESUME_FLAGS)
    if refused:
        # As typed: a part's option flag (--prior-mixture-components) has a dest of its own.
        flag = next(a.option_strings[0] for a in args.actions if a.dest == refused[0])
        raise UserError(f"{flag} cannot change when a run is resumed: the run keeps the data, "
                        f"model and objective it was trained with; --resume takes --epochs, "
                        f"--lr, --clip-norm, --early-stopping, --device, --checkpoint-every, "
                        f"--trust-story, --log and --mlflow-uri")
    return {k: getattr(args, k) for k in ("lr", "clip_norm", "early_stopping", "device")
            if k in given}


def report(result: TrainResult) -> int:
    fit = result.fit
    if fit.interrupted:
        state = fit.state
        size = distributed.current().size
        again = f"torchrun --nproc-per-node {size} -m pyro_vae" if size > 1 else "pyro-vae"
        print(f"interrupted at epoch {state.epoch + 1}, step {state.step}; checkpoint written. "
              f"Continue with: {again} train --resume {result.path}", file=sys.stderr)
        print(result.path)
        return EXIT_INTERRUPTED
    last, ran = fit.history[-1], len(fit.history) - result.before
    span = (f"{result.before + 1}-{len(fit.history)}" if ran > 1 else f"{len(fit.history)}")
    done = (f"{len(fit.history)} epochs" if not result.before else
            f"{ran} epoch{'s' if ran != 1 else ''} ({span} of {len(fit.history)})" if ran else
            f"0 epochs (the run had finished its {len(fit.history)})")
    print(f"{done} in {fit.seconds:.1f} s; validation ELBO "
          f"{last.val_elbo:.3f} nats per image", file=sys.stderr)
    print(result.path)
    return 0


def run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` every rank runs the command; rank 0 alone speaks and writes. When a
    rank is lost, the lowest one left says so in one line, and every one left exits 5 at
    once (``os._exit``: the process group is broken)."""
    world = distributed.start(_device(args))
    try:
        with stop_on_signals() as stop:  # torchrun's SIGTERM, too, while a loss is named
            try:
                return _as_rank(args, world, stop)
            except Exception as err:
                lost = err if isinstance(err, distributed.LostRankError) else \
                    None if isinstance(err, UserError) else distributed.lost_ranks(world)
                if lost is None:
                    raise
    finally:
        distributed.finish()
    if world.rank == lost.reporter:
        print(f"pyro-vae train: error: {lost}", file=sys.stderr)
    # Out at once: tearing down a process group that lost a peer can take seconds of
    # native cleanup, which would only delay torchrun's report and the next start.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_LOST_RANK)


def _as_rank(args: argparse.Namespace, world: distributed.World, stop: StopFlag) -> int:
    if world.writer:
        return _run(args, stop)
    try:  # rank 0 reports the same error, or the result, once
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), user_errors():
            return _run(args, stop)
    except UserError as err:
        raise SystemExit(EXIT_USAGE if err.code is None else err.code) from None


def _device(args: argparse.Namespace) -> str:
    """The device the fit will use (a resumed run's own, unless --device is given): it
    chooses the process group's backend."""
    if args.resume is None or "device" in given_flags(args.actions, args.argv):
        return args.device
    try:
        return str(json.loads((args.resume / "config.json").read_text())["train"]["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return args.device  # the resume itself will say what is wrong


def _run(args: argparse.Namespace, stop: StopFlag) -> int:
    every = args.checkpoint_every
    try:
        if args.resume is not None:
            changes = resume_changes(args, given_flags(args.actions, args.argv))
            result = resume_run(args.resume, args.epochs, changes=changes,
                                progress=not args.no_progress, stop=stop,
                                trust_story=args.trust_story, loggers=args.log,
                                mlflow_uri=args.mlflow_uri, checkpoint_every=every)
        else:
            if args.trust_story:
                raise UserError("--trust-story is for --resume RUN: a story file named by "
                                "--model is run as you gave it")
            result = train_run(config_from_args(args), args.out, args.name,
                               progress=not args.no_progress, stop=stop, checkpoint_every=every)
    except DivergenceError as err:
        raise UserError(f"{err} The checkpoint of the last finished epoch, if any, is "
                        f"written and kept.", EXIT_DIVERGED) from None
    except DiskFullError as err:
        raise UserError(f"{err}. The last good checkpoint and metrics.jsonl in "
                        f"{err.path.parent} are intact and agree; free space and continue "
                        f"with: pyro-vae train --resume {err.path.parent}", EXIT_DISK_FULL) from None
    return report(result)


COMMANDS.register("train")(Command(HELP["train"], add_arguments, run))
