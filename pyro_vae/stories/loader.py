"""Stories from files: ``pyro-vae train --model story.py:NAME [--guide auto|guide.py:NAME]``.

``NAME`` in the file is either

- a story itself: a function whose first argument is ``x`` (``def model(x, y=None)``), or
- a factory: a class or function called with the keywords it names among
  ``data_dim`` (D, pixels per image), ``image_shape`` (e.g. ``(8, 8)``) and the
  ``--model-arg key=value`` pairs, returning the story (an ``nn.Module`` or function).

A guide file's factory may also name ``model`` (the story built above). ``auto``
builds an :class:`~pyro_vae.guides.AutoAmortizedGuide` on an MLP encoder.

Every way a file can fail (missing, a syntax error, an exception while importing,
no such name, no observed site, a latent the guide cannot handle) is a
:class:`StoryError`: one line naming the file, and the line where Python gives one.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.programs import cuda_devices
from pyro_vae.traces import (
    check_local,
    describe_latent,
    image_site,
    is_enumerated,
    is_latent,
    trace_program,
)


class StoryError(ValueError):
    """A story or guide file that cannot be used; the message names the file (and line)."""


def parse_spec(spec: str, what: str = "--model") -> tuple[Path, str]:
    """``"path/to/story.py:NAME"`` → (path, NAME)."""
    path, sep, name = spec.rpartition(":")
    if not sep and spec.endswith(".py"):
        role = "guide" if what == "--guide" else "story"
        defined = defined_names(Path(spec).expanduser())
        # For a guide, a name that says so is the likelier example (hierarchical.py has both).
        example = next((d for d in defined if role in d.lower()), defined[0] if defined else None)
        raise StoryError(f"{what} {spec}: a {role} file needs the name of the {role} in it, as "
                         f"{spec}:NAME (e.g. {spec}:{example or 'My' + role.title()})"
                         + (f"; {Path(spec).name} defines {', '.join(defined)}" if defined else ""))
    if not sep or not path.endswith(".py") or not name.isidentifier():
        raise StoryError(f"{what} {spec!r}: expected FILE.py:NAME, e.g. stories/ink.py:InkStory")
    return Path(path).expanduser(), name


def defined_names(path: Path) -> list[str]:
    """The story-like names a Python file defines at its top level: public classes (story
    modules, factories) and functions whose first argument is ``x`` (stories), read from its
    syntax tree without running it (none when it cannot be read or parsed)."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return []

    def story_like(node: ast.stmt) -> bool:
        if isinstance(node, ast.ClassDef):
            return True
        args = node.args.posonlyargs + node.args.args if isinstance(node, ast.FunctionDef) else []
        return bool(args) and args[0].arg == "x"

    return [node.name for node in tree.body
            if story_like(node) and not getattr(node, "name", "_").startswith("_")]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_arg(text: str) -> tuple[str, Any]:
    """``"key=value"`` → (key, value), the value read as a Python literal when it is one."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise StoryError(f"--model-arg {text!r}: expected key=value, e.g. latent_dim=4")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def load_object(path: Path, name: str, sha256: str | None = None) -> Any:
    """Import the file ``path`` as a fresh module and return its attribute ``name``.

    The bytes read are the bytes run: no cached bytecode (``__pycache__``) is consulted or
    written. With ``sha256``, they must have that digest (the one a caller checked), so a file
    swapped after the check is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise StoryError(f"{path}: no such story file")
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    if sha256 is not None and digest != sha256:
        raise StoryError(f"{path} changed while it was being read; nothing in it was run")
    module_name = f"pyro_vae_story_{digest[:16]}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        exec(code, module.__dict__)  # noqa: S102 - the story file is the user's program
    except SyntaxError as err:
        raise StoryError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    except Exception as err:  # noqa: BLE001 - any failure of a user's file is reported as one line
        raise StoryError(f"{_where(path, err)}: importing the story file failed: "
                         f"{type(err).__name__}: {err}") from None
    if not hasattr(module, name):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise StoryError(f"{path}: has no {name!r} (it defines {', '.join(found) or 'nothing callable'})")
    return getattr(module, name)


def _where(path: Path, err: BaseException) -> str:
    """``path:line`` of the deepest frame of ``err`` in ``path``, else ``path``."""
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__)
             if Path(f.filename).resolve() == Path(path).resolve()]
    return f"{path}:{lines[-1]}" if lines else str(path)


def enumeration_error(sources: list[str], err: BaseException, sites: list[str]) -> StoryError:
    """The one line for a story or guide (``FILE.py:NAME`` in ``sources``) that runs as drawn
    but fails once its enumerated ``sites`` get their own dimension of values: the file and
    line (the first of ``sources`` that the traceback passes through), and the error."""
    message = str(err).splitlines()[0] if str(err) else ""
    places = [_where(Path(s.split(":")[0]), err) for s in sources if s]
    where = next((p for p in places if ".py:" in p), places[0] if places else "the story")
    return StoryError(f"{where}: the story fails when "
                      f"{', '.join(map(repr, sites))} {'is' if len(sites) == 1 else 'are'} "
                      f"summed out ({type(err).__name__}: {message}); under enumeration each "
                      f"such site's value has an extra dimension on the left (e.g. [K, 1] for "
                      f"[N]), so broadcast with it rather than reshape or expand to [N, ...]")


def _is_story(obj: Any) -> bool:
    """A function (not a class) whose first parameter is ``x``."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "x"


def call_factory(obj: Any, path: Path, name: str, offered: dict[str, Any]) -> Any:
    """``obj`` itself when it is a story, else ``obj(**the offered keywords it names)``."""
    if _is_story(obj) or isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise StoryError(f"{path}: {name!r} is a {type(obj).__name__}, not a story or a factory")
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    try:
        return obj(**kwargs)
    except Exception as err:  # noqa: BLE001
        raise StoryError(f"{_where(path, err)}: {name}({', '.join(kwargs)}) failed: "
                         f"{type(err).__name__}: {err}") from None


OFFERED = ("data_dim", "image_shape", "model", "cfg")
"""Keywords the engine itself gives a factory (``cfg``: a shipped story's ModelConfig)."""


def factory_keywords(obj: Any) -> set[str] | None:
    """The keywords ``obj`` can be called with: none for a story itself (it is not called),
    ``None`` when it takes any (``**kwargs``) or has no readable signature."""
    if _is_story(obj) or isinstance(obj, nn.Module) or not callable(obj):
        return set()
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_model_args(args: dict[str, Any], takers: dict[str, set[str] | None]) -> None:
    """Refuse a ``--model-arg`` that none of ``takers`` (what → :func:`factory_keywords`)
    takes, naming the ones they do: a typo would otherwise be dropped and the default used."""
    if any(keywords is None for keywords in takers.values()):
        return
    taken = set().union(*takers.values())
    unknown = [key for key in args if key not in taken]
    if not unknown:
        return
    names = sorted(taken - set(OFFERED))
    near = difflib.get_close_matches(unknown[0], names, n=1)
    takes = f"the names taken are {', '.join(names)}" if names else "no --model-arg is taken"
    raise StoryError(f"--model-arg {unknown[0]}={args[unknown[0]]!r}: {' and '.join(takers)} "
                     f"take{'s' if len(takers) == 1 else ''} no {unknown[0]!r}; {takes}"
                     + (f" (did you mean {near[0]}?)" if near else ""))


def first_sentence(text: str) -> str:
    """The message without what Pyro appends (a table of trace shapes): its first line, and
    the next where the first only introduces it (``Error while computing log_prob at site
    'x':``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def check_image_shape_of(trace: poutine.Trace, name: str, x: Tensor) -> None:
    """The distribution scoring x must have x's shape: one that broadcasts against it (more
    values per row, or fewer) scores a number, but draws images of another shape."""
    fn = trace.nodes[name]["fn"]
    shape = tuple(getattr(fn, "batch_shape", ())) + tuple(getattr(fn, "event_shape", ()))
    if shape != tuple(x.shape):
        raise ValueError(f"site {name!r} scores x of shape {list(x.shape)} with a distribution "
                         f"of shape {list(shape)} (batch {list(fn.batch_shape)}, event "
                         f"{list(fn.event_shape)}); it must have x's shape, one value per pixel")


def check_story(model: Callable, x: Tensor, batch: dict[str, Tensor], source: str
                ) -> poutine.Trace:
    """Trace the story once on rows ``x`` and score the trace (every site's log-density, so
    that a distribution whose shape or support does not fit its value is refused here, not in
    the fit's first step): it must score x at an observed site and keep every latent local to
    ``pyro.plate("data", N)``. Returns the trace."""
    try:
        trace = trace_program(model, x, batch)
        # Scored once more for the shapes alone, unvalidated (the rows may be grey levels that
        # a fit binarizes batch by batch), the caller's random state left as it was.
        with torch.random.fork_rng(devices=cuda_devices(x)), pyro.validation_enabled(False):
            trace_program(model, x, batch).compute_log_prob()
    except Exception as err:  # noqa: BLE001
        message = first_sentence(str(err))
        raise StoryError(f"{_where(Path(source.split(':')[0]), err)}: running the story on "
                         f"{len(x)} rows failed: {type(err).__name__}: {message}") from None
    try:
        check_image_shape_of(trace, image_site(trace, x), x)
        for name, site in trace.nodes.items():
            if is_enumerated(site):  # summed out: it need only be local
                check_local(name, site, len(x), who="pyro-vae")
            elif is_latent(site):
                describe_latent(name, site, len(x), who="pyro-vae")
    except ValueError as err:
        raise StoryError(f"{source}: {err}") from None
    return trace
