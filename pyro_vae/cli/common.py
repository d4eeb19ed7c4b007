"""Pieces shared by the subcommands: the command registry, argument types, error mapping."""

from __future__ import annotations

import argparse
import contextlib
import errno
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn

from pyro_vae.files import DiskFullError
from pyro_vae.registry import Registry, UnknownNameError

COMMANDS: Registry = Registry("command")
HELP: dict[str, str] = {
    "train": "fit a VAE and write a run folder (config, metrics, checkpoint, figures)",
    "sample": ("draw images from a fitted run's story (prior predictive, or with latent sites "
               "held fixed) into an image grid"),
    "evaluate": ("estimate log p(x) of a split (prior Monte Carlo, ELBO, IWAE) with PSIS "
                 "diagnostics, or by AIS (--method ais) checked by BDMC (--bdmc N); adds its "
                 "entries to evaluation.json and draws figures; continues where a stopped one "
                 "left off"),
    "diagnose": ("sample the true posterior by NUTS and compare it with the guide: inference "
                 "gaps, posterior collapse, predictive checks; continues where a stopped one "
                 "left off"),
    "compare": ("compare run folders in one table: story, parts, the settings that differ, "
                "ELBOs, log p(x) estimates, gaps; their validation-ELBO curves in one figure"),
    "export": ("write a fitted run's decoder (latents → the likelihood's parameters and mean "
               "image) and encoder (x → the guide's parameters) as ONNX or torch.export (pt2) "
               "files with a dynamic batch axis and model_card.json; --check compares them "
               "with PyTorch"),
    "explore": ("write the run's explorer.html (train writes it too): move through the latent "
                "map and watch the decoder's mean image, fresh draws and log p(x | z) follow, "
                "in a self-contained page"),
}
"""Each subcommand's one-line help, in the order ``pyro-vae --help`` lists them. It is read
without importing the command's module, which loads torch and the wings the command runs on."""

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_DISK_FULL = 4  # no space left on the device; the files already written are intact
EXIT_LOST_RANK = 5  # torchrun: another rank was lost (pyro_vae.distributed.LOST_RANK_EXIT)
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, how it adds its flags, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def add_checkpoint_argument(p: argparse.ArgumentParser) -> None:
    """``--checkpoint last|best``: which of a run folder's checkpoints to load."""
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="the run's last checkpoint, or best.safetensors: the parameters at its "
                        "best validation ELBO")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are the one line and where to read more: argparse
    would print the whole usage above it (47 lines for ``train``), burying the line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee {self.prog} --help\n")


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help where that says something: not where the
    help states its own default (``(default: RUN)``), nor for a flag without a default
    value (None, off, empty); a tuple is written as the flag takes it (``256,128``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if ("default" in text.lower() or default is None or default is False
                or default is argparse.SUPPRESS or default in ("", [], ())):
            return text
        if isinstance(default, tuple):  # argparse then formats the help with %: escape ours
            return f"{text} (default: {','.join(map(str, default))})".replace("%", "%%")
        return super()._get_help_string(action)


class UserError(Exception):
    """A mistake of the user's, reported as one line with exit status ``code``."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


UNWRITABLE = (errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
              errno.ENAMETOOLONG)
"""Errors of a write that the user's paths cause (not the disk): one line, exit 2."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors about input into :class:`UserError`."""
    # Here, not at the top: the run wing loads torch and validation numpy, which
    # pyro-vae --help does without.
    from pyro_vae.runs import CheckpointError, RunLockedError
    from pyro_vae.validation import DataError

    try:
        yield
    except DiskFullError as err:
        raise UserError(str(err), EXIT_DISK_FULL) from None
    except (DataError, UnknownNameError, CheckpointError, FileNotFoundError,
            FileExistsError, ValueError, RunLockedError) as err:
        raise UserError(str(err)) from None
    except OSError as err:  # a full disk under a write that is not pyro-vae's own
        if err.errno in UNWRITABLE:  # an --out that names a folder, a read-only place
            raise UserError(f"cannot write {err.filename2 or err.filename}: "
                            f"{err.strerror}") from None
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"no space left on the device for {err.filename or 'a file'}",
                        EXIT_DISK_FULL) from None


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    """``--trust-story``: import a run folder's story file that was not trained here."""
    p.add_argument("--trust-story", action="store_true",
                   help="a run folder's story.py (and guide.py) is imported only if pyro-vae "
                        "train wrote it for you (its SHA-256 is in your trust file, "
                        "$PYRO_VAE_TRUST_FILE or ~/.config/pyro-vae/trusted.json); this flag "
                        "trusts a folder from elsewhere, once: read its code first. It is "
                        "remembered. Built-in and shipped stories never need it")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {value}")
    return value


def add_memory_argument(p: argparse.ArgumentParser) -> None:
    """``--memory-budget SIZE``: the working memory the command's chunks may use."""
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="working memory the chunks may use (200MB, 2GiB; default "
                        "$PYRO_VAE_MEMORY_BUDGET, else half of the memory available at the "
                        "start, GPU memory on a GPU): chunk sizes shrink to fit it, whatever "
                        "K and N are, and a request whose one draw for one image does not fit "
                        "is refused")


def memory_size(text: str) -> int:
    """``200MB`` → bytes (:func:`pyro_vae.memory.parse_size`)."""
    from pyro_vae.memory import parse_size  # torch: not for pyro-vae --help

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def int_list(text: str) -> tuple[int, ...]:
    """``"256,128"`` → ``(256, 128)``, each positive."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sizes


def float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def choice_of(registry: Registry) -> Callable[[str], str]:
    """An argparse type accepting the registry's names, refusing others with the list."""

    def check(text: str) -> str:
        try:
            registry.lookup(text)
        except UnknownNameError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    check.__name__ = registry.kind
    return check


def add_resume_arguments(p: argparse.ArgumentParser, partial: str) -> None:
    """``--resume`` of a long computation kept in ``partial`` (e.g. "evaluation in
    RUN/evaluation.partial"), and ``--progress`` / ``--no-progress`` for its bars."""
    p.add_argument("--resume", action="store_true",
                   help=f"continue the partial {partial}, refusing if its settings differ from "
                        f"these (the same command without --resume also continues it, and "
                        f"starts afresh where the settings differ)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show progress bars even when stderr is not a terminal")
    shown.add_argument("--no-progress", action="store_true", help="hide the progress bars")

