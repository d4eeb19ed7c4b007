"""Generated inputs, one strategy per boundary a user or a file reaches, each a *recipe*
(plain values Hypothesis can print and shrink) that :func:`build` turns into a
:class:`~harness.Case` inside a scratch folder of the :class:`~harness.Workspace`.

``cli``         argv drawn from the parser's own actions: every subcommand, any subset of its
                flags, values by the flag's type (its registry's names, its choices, numbers
                at and past their bounds, words of its help text, junk), unknown flags
``run-files``   a run's config.json / metrics.jsonl / evaluation.json edited: truncated (as a
                crash leaves a last line), reordered, fields deleted or of another type
``checkpoint``  the safetensors checkpoint: byte flips (mostly in its header), truncations,
                its header's metadata and tensor entries rewritten
``data``        .npy / .npz files and image folders of generated shapes, dtypes and values
                (NaN, inf, huge, empty), labels of other lengths and out of range
``stories``     the shipped story files mutated: a plate removed, a site renamed to the
                observed site's name, a latent outside the plate, another event shape, a
                distribution of the wrong support

The workload is kept small by cheap base flags before the generated ones (which override
them): integers are drawn small, so a generated ``--epochs`` is 1 to 6, not 10⁹. No input
asks for a download (``--download`` is left out: this machine has no network).
"""

from __future__ import annotations

import argparse
import json
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from harness import REPO, Case, Workspace, binary_images

# ---------------------------------------------------------------------------- the CLI

BASE = {  # cheap settings first; generated flags after them override
    "train": ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32",
              "--device", "cpu", "--no-progress", "--data", "{DATA}"],
    "evaluate": ["{RUN}", "--samples", "8", "--points", "6", "--steps", "3", "--chains", "2",
                 "--leapfrog", "2", "--warmup-steps", "2", "--no-progress"],
    "diagnose": ["{RUN}", "--points", "2", "--chains", "1", "--warmup", "4", "--samples", "4",
                 "--local-steps", "4", "--elbo-samples", "8", "--no-progress", "--out", "diag"],
    "sample": ["{RUN}", "--n", "4", "--out", "samples.png"],
    "compare": ["{RUN}", "{RUN_INK}", "--out", "cmp"],
    "export": ["{RUN}", "--out", "exported", "--no-progress"],
    "explore": ["{RUN}", "--out", "page.html"],
}
NEVER = {"download", "help", "check"}
"""Flags not generated: a download needs the network; ``export --check`` ends in exit 1 when
a difference exceeds its tolerance, a verdict rather than an error (tests/export cover it)."""
PLACES = ["{RUN}", "{RUN_INK}", "{DATA}", "missing", "", ".", "runs/../x", "{RUN}/config.json"]
JUNK = ["", " ", "-", "--", "nan", "inf", "-inf", "1e400", "0x10", "1_000", "½", "💥", "a,b",
        ",", "=", "'", "\\", "\x00"]
NUMBERS = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(["0", "-1", "1.5", "1e3", "+2", "007"]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["1e308", "-0.0", "5e-324", "1e-3", "0.5", "2", "nan"]))


def _registry_names(fn: Any) -> list[str] | None:
    """The names of the registry a ``choice_of`` type checks against, read off its closure."""
    for cell in getattr(fn, "__closure__", None) or ():
        if isinstance(cell.cell_contents, dict) and hasattr(cell.cell_contents, "lookup"):
            return sorted(cell.cell_contents)
    return None


def _words(action: argparse.Action) -> list[str]:
    """Words of a flag's help and metavar: the names it lists, and anything else it says."""
    text = f"{action.help or ''} {action.metavar or ''}"
    return sorted({w.strip(".,;()") for w in re.findall(r"[\w$~./:\-]+", text) if len(w) > 1})


def value_strategy(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """The tokens after a flag: by its type, its choices, its registry or its help's words."""
    kind = getattr(action.type, "__name__", "")
    if action.nargs == 0:
        return st.just([])
    junk = st.sampled_from(JUNK).map(lambda t: [t])
    if action.choices:
        named = st.sampled_from(sorted(map(str, action.choices)))
    elif _registry_names(action.type):
        named = st.sampled_from(_registry_names(action.type))
    elif kind in ("positive_int", "non_negative_int", "int"):
        named = NUMBERS
    elif kind in ("positive_float", "non_negative_float", "float"):
        named = FLOATS
    elif kind in ("int_list", "float_list"):
        item = NUMBERS if kind == "int_list" else FLOATS
        named = st.lists(item, min_size=0, max_size=3).map(",".join)
    elif kind == "memory_size":
        named = st.sampled_from(["200MB", "1KB", "1", "0", "-5MB", "1e30TB", "3 GiB", "MB", "2KiB"])
    elif kind == "Path" or action.dest in ("run", "runs", "resume", "out", "data", "data_root"):
        named = st.sampled_from(PLACES)
    else:
        named = st.one_of(st.sampled_from(_words(action) or ["x"]),
                          st.text("az09_=:,./-", max_size=8))
    values = st.one_of(named.map(lambda t: [t]), junk) if action.nargs != "+" else \
        st.lists(st.sampled_from(PLACES), min_size=1, max_size=3)
    return values


@lru_cache(maxsize=None)
def subparsers() -> dict[str, argparse.ArgumentParser]:
    from pyro_vae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def cli_recipes(commands: tuple[str, ...] | None = None) -> st.SearchStrategy[tuple[str, list[str]]]:
    """(command, generated tokens): a subset of the command's flags with generated values,
    sometimes an unknown flag or a stray word among them."""
    parsers = subparsers()

    @st.composite
    def recipe(draw):
        command = draw(st.sampled_from(commands or tuple(parsers)))
        actions = [a for a in parsers[command]._actions
                   if a.option_strings and a.dest not in NEVER]
        tokens: list[str] = []
        for action in draw(st.lists(st.sampled_from(actions), max_size=4)):
            flag = draw(st.sampled_from(action.option_strings))
            tokens += [flag, *draw(value_strategy(action))]
        if draw(st.integers(0, 9)) == 0:
            tokens.insert(draw(st.integers(0, len(tokens))),
                          draw(st.sampled_from(["--no-such-flag", "-x", "stray", "--epochs=2", "-"])))
        return command, tokens

    return recipe()


def build_cli(recipe: tuple[str, list[str]], ws: Workspace) -> Case:
    command, tokens = recipe
    places: dict[str, str] = {"{DATA}": str(ws.data)}
    argv = [command, *BASE[command], *tokens]
    if any("{RUN}" in t for t in argv):
        places["{RUN}"] = str(ws.run_copy("vae"))
    if any("{RUN_INK}" in t for t in argv):
        places["{RUN_INK}"] = str(ws.run_copy("ink"))
    argv = [_fill(t, places) for t in argv]
    watched = [Path(places[k]) for k in ("{RUN}", "{RUN_INK}", "{DATA}") if k in places]
    return Case(argv, watched, f"cli {command} {' '.join(tokens)}")


def _fill(token: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        token = token.replace(key, value)
    return token


# ---------------------------------------------------------------------------- run files

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
COMMANDS_ON_A_RUN = [["sample", "{RUN}", "--n", "4", "--out", "s.png"],
                     ["compare", "{RUN}", "--out", "cmp"],
                     ["evaluate", "{RUN}", "--samples", "4", "--points", "4", "--no-progress"],
                     ["train", "--resume", "{RUN}", "--epochs", "3", "--no-progress"]]


@st.composite
def json_edit(draw) -> tuple:
    """An edit of a JSON document: truncate, reorder, delete or retype at a random path."""
    how = draw(st.sampled_from(["truncate", "delete", "retype", "rename", "reorder", "garbage",
                                "empty", "wrap"]))
    return (how, draw(st.lists(st.integers(0, 40), max_size=4)), draw(JSON_VALUES),
            draw(st.integers(0, 10**6)), draw(st.binary(max_size=12)))


def edit_json(text: str, edit: tuple) -> str:
    how, path, value, cut, noise = edit
    if how == "truncate":
        return text[:cut % max(1, len(text))]
    if how == "empty":
        return ""
    if how == "garbage":
        return text + noise.decode("latin-1")
    doc = json.loads(text)
    if how == "wrap":
        return json.dumps([doc])
    parent, key = _walk(doc, path)
    if parent is None:
        return json.dumps(value)
    if how == "delete":
        del parent[key]
    elif how == "retype":
        parent[key] = value
    elif how == "rename" and isinstance(parent, dict):
        parent[f"{key}_"] = parent.pop(key)
    elif how == "reorder" and isinstance(parent, dict):
        items = list(parent.items())
        parent.clear()
        parent.update(reversed(items))
    return json.dumps(doc)


def _walk(doc: Any, path: list[int]) -> tuple[Any, Any]:
    """The container and key reached by following ``path`` (indices modulo each level)."""
    parent, key, node = None, None, doc
    for step in path:
        if isinstance(node, dict) and node:
            parent, key = node, sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            parent, key = node, step % len(node)
        else:
            break
        node = parent[key]
    return parent, key


@st.composite
def run_file_recipes(draw) -> tuple:
    """(file, edit, the command that reads it); for metrics.jsonl the edit is per line."""
    target = draw(st.sampled_from(["config.json", "metrics.jsonl", "evaluation.json"]))
    lines = draw(st.sampled_from(["edit", "truncate-last", "drop", "duplicate", "swap",
                                  "blank", "junk-line"]))
    return (target, lines, draw(json_edit()), draw(st.integers(0, 100)),
            draw(st.sampled_from(range(len(COMMANDS_ON_A_RUN)))))


def build_run_file(recipe: tuple, ws: Workspace) -> Case:
    target, lines_op, edit, index, which = recipe
    run = ws.run_copy("vae")
    if target == "evaluation.json":
        (run / target).write_text(json.dumps({"entries": {}, "latest": {}}))
    path = run / target
    text = path.read_text()
    if target == "metrics.jsonl":
        text = edit_lines(text.splitlines(), lines_op, edit, index)
    else:
        text = edit_json(text, edit)
    path.write_text(text)
    argv = [t.replace("{RUN}", str(run)) for t in COMMANDS_ON_A_RUN[which]]
    return Case(argv, [run], f"run-files {target} {lines_op} {edit[0]} then {argv[0]}")


def edit_lines(lines: list[str], op: str, edit: tuple, index: int) -> str:
    i = index % max(1, len(lines))
    if op == "truncate-last" and lines:  # a crash in the middle of an append
        lines[-1] = lines[-1][:edit[3] % max(1, len(lines[-1]))]
        return "\n".join(lines)
    if op == "edit" and lines:
        lines[i] = edit_json(lines[i], edit)
    elif op == "drop" and lines:
        del lines[i]
    elif op == "duplicate" and lines:
        lines.insert(i, lines[i])
    elif op == "swap" and len(lines) > 1:
        lines[0], lines[-1] = lines[-1], lines[0]
    elif op == "blank":
        lines.insert(i, "")
    elif op == "junk-line":
        lines.insert(i, edit[4].decode("latin-1"))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- checkpoints


@st.composite
def checkpoint_recipes(draw) -> tuple:
    """(which file, byte flips [(position, xor)], header-weighted; a cut; a metadata edit)."""
    which = draw(st.sampled_from(["checkpoint.safetensors", "best.safetensors"]))
    in_header = st.tuples(st.integers(0, 4000), st.integers(1, 255))
    anywhere = st.tuples(st.integers(0, 10**7), st.integers(1, 255))
    flips = draw(st.lists(st.one_of(in_header, in_header, anywhere), max_size=4))
    cut = draw(st.none() | st.integers(0, 10**7))
    meta = draw(st.none() | json_edit())
    command = draw(st.sampled_from([0, 0, 2, 3]))  # sample mostly: it loads and is fast
    return which, flips, cut, meta, command


def edit_header(raw: bytes, edit: tuple) -> bytes:
    """The safetensors header (8-byte length, JSON) edited as JSON, its length rewritten."""
    (size,) = struct.unpack("<Q", raw[:8])
    try:
        header = raw[8:8 + size].decode()
        json.loads(header)
    except (UnicodeDecodeError, ValueError):
        return raw
    text = edit_json(header, edit).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + size:]


def build_checkpoint(recipe: tuple, ws: Workspace) -> Case:
    which, flips, cut, meta, command = recipe
    run = ws.run_copy("vae")
    path = run / which
    raw = bytearray(path.read_bytes())
    if meta is not None:
        raw = bytearray(edit_header(bytes(raw), meta))
    for position, xor in flips:
        raw[position % len(raw)] ^= xor
    if cut is not None:
        raw = raw[:cut % (len(raw) + 1)]
    path.write_bytes(bytes(raw))
    argv = [t.replace("{RUN}", str(run)) for t in COMMANDS_ON_A_RUN[command]]
    if which == "best.safetensors" and argv[0] != "train":
        argv += ["--checkpoint", "best"]
    return Case(argv, [run], f"checkpoint {which} flips={flips} cut={cut} "
                             f"meta={None if meta is None else meta[0]} then {argv[0]}")


# ---------------------------------------------------------------------------- data files

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "bool", "complex64", "<U2", "datetime64[s]"]
SPECIAL = [0.0, 1.0, 0.5, -1.0, 255.0, 256.0, 1e30, -1e30, float("nan"), float("inf"),
           float("-inf"), 1e-45]


@st.composite
def array_recipe(draw, rows: int | None = None) -> tuple:
    """(shape, dtype, fill, seed, specials [(index, value)]): an array described, not built,
    so that Hypothesis prints it short. Half are images a fit could take (that a special
    value may spoil), half anything."""
    if rows is None and draw(st.booleans()):
        shape = (draw(st.integers(10, 48)), *draw(st.sampled_from([(8, 8), (4, 6), (1, 8, 8),
                                                                     (3, 4, 4), (64,)])))
        fill = draw(st.sampled_from(["binary", "unit", "bytes"]))
        dtype = draw(st.sampled_from(["float32", "float64", "uint8", "bool", "float16"]))
        specials = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIAL)),
                                 max_size=1))
        return shape, dtype, fill, draw(st.integers(0, 2**16)), specials
    dims = draw(st.lists(st.integers(0, 9), min_size=0, max_size=4))
    shape = ([rows] if rows is not None else []) + dims
    if rows is None and shape:
        shape[0] = draw(st.sampled_from([0, 1, 3, 40, shape[0]]))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from(["binary", "unit", "bytes", "normal", "labels", "zeros"]))
    specials = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIAL)), max_size=3))
    return tuple(shape), dtype, fill, draw(st.integers(0, 2**16)), specials


def make_array(recipe: tuple) -> np.ndarray:
    shape, dtype, fill, seed, specials = recipe
    if np.prod(shape, dtype=np.int64) > 20_000:
        shape = (min(shape[0], 40), *shape[1:]) if shape else shape
    rng = np.random.default_rng(seed)
    base = {"binary": lambda: rng.random(shape) > 0.5, "unit": lambda: rng.random(shape),
            "bytes": lambda: rng.integers(0, 256, shape), "normal": lambda: rng.normal(0, 3, shape),
            "labels": lambda: rng.integers(-2, 12, shape), "zeros": lambda: np.zeros(shape)}[fill]()
    a = np.asarray(base).astype("float64")
    flat = a.reshape(-1)
    for index, value in specials:
        if flat.size:
            flat[index % flat.size] = value
    with np.errstate(all="ignore"):
        if dtype == "<U2":
            return a.astype(str).astype("<U2")
        if dtype.startswith("datetime"):
            return np.nan_to_num(a).astype("int64").astype(dtype)
        return a.astype(dtype)


@st.composite
def data_recipes(draw) -> tuple:
    """(container, {key: array recipe}, image-folder files, extra train flags)."""
    container = draw(st.sampled_from([".npz", ".npz", ".npy", "folder"]))
    x = draw(array_recipe())
    arrays = {"x": x}
    if container == ".npz":
        n = x[0][0] if x[0] else 1
        for key in draw(st.lists(st.sampled_from(["y", "labels", "x_test", "y_test", "other"]),
                                 max_size=3, unique=True)):
            arrays[key] = draw(array_recipe(rows=draw(st.sampled_from([n, n + 1, max(0, n - 1), 5]))))
        if draw(st.booleans()):
            arrays[draw(st.sampled_from(["images", "x_train", "X"]))] = arrays.pop("x")
    files = draw(st.lists(st.tuples(st.sampled_from(["png", "png", "jpg", "txt", "bad", "empty"]),
                                    st.integers(1, 9), st.integers(1, 9),
                                    st.sampled_from(["L", "RGB", "RGBA", "1", "I;16", "P"])),
                          max_size=6))
    flags = draw(st.lists(st.sampled_from([["--binarize", "none"], ["--binarize", "dequantize"],
                                           ["--binarize", "grey"], ["--likelihood", "gaussian"],
                                           ["--stream", "on"], ["--stream", "off"],
                                           ["--model", "cvae"], ["--model", "m2"],
                                           ["--labels", "2"]]), max_size=2))
    return container, arrays, files, [t for f in flags for t in f]


def build_data(recipe: tuple, ws: Workspace) -> Case:
    container, arrays, files, flags = recipe
    if container == "folder":
        path = Path.cwd() / "images"
        path.mkdir()
        write_images(path, files)
    else:
        path = Path.cwd() / f"data{container}"
        built = {k: make_array(v) for k, v in arrays.items()}
        if container == ".npy":
            np.save(path, next(iter(built.values())))
        else:
            np.savez(path, **built)
    argv = ["train", *BASE["train"], "--out", "runs", *flags]
    argv[argv.index("{DATA}")] = str(path)
    return Case(argv, [path], f"data {container} "
                              f"{ {k: v[:2] for k, v in arrays.items()} if container != 'folder' else files} {flags}")


def write_images(folder: Path, files: list[tuple]) -> None:
    from PIL import Image

    rng = np.random.default_rng(len(files))
    for i, (kind, h, w, mode) in enumerate(files):
        target = folder / f"{i:03d}.{'png' if kind in ('bad', 'empty') else kind}"
        if kind == "empty":
            target.write_bytes(b"")
        elif kind == "bad":
            target.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(20))
        elif kind == "txt":
            target.write_text("not an image")
        else:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert(mode if kind == "png" else "RGB")
            image.save(target)


# ---------------------------------------------------------------------------- stories

STORIES = {"ink.py": "InkStory", "hierarchical.py": "Hierarchical", "quadrants.py": "Quadrants",
           "spatial.py": "Spatial"}
PRELUDE = '''
import torch as _t
import pyro.distributions as _d


def _wrong_support(kind, *args, **kwargs):
    """A distribution of another support, built from the arguments meant for this one."""
    first = args[0] if args else next(iter(kwargs.values()))
    p = _t.sigmoid(first)
    if kind == "beta":
        return _d.Beta(p + 1e-3, 1.0)
    if kind == "poisson":
        return _d.Poisson(_t.exp(first.clamp(max=5)))
    if kind == "categorical":
        return _d.Categorical(logits=first)
    if kind == "dirichlet":
        return _d.Dirichlet(_t.exp(first.clamp(-5, 5)))
    if kind == "gamma":
        return _d.Gamma(p + 0.1, 1.0)
    return _d.Uniform(p - 1.0, p + 1.0)
'''
SUPPORTS = ["beta", "poisson", "categorical", "dirichlet", "gamma", "uniform"]


@st.composite
def story_recipes(draw) -> tuple:
    """(story file, mutations [(operator, which occurrence, a support)])."""
    name = draw(st.sampled_from(sorted(STORIES)))
    ops = st.sampled_from(["remove-plate", "rename-to-observed", "latent-outside-plate",
                           "event-shape", "wrong-support-observed", "wrong-support-latent",
                           "none"])
    mutations = draw(st.lists(st.tuples(ops, st.integers(0, 5), st.sampled_from(SUPPORTS)),
                              min_size=1, max_size=3))
    return name, mutations


SAMPLE = re.compile(r'pyro\.sample\(\s*"(\w+)"')
OBSERVED = re.compile(r'pyro\.sample\(\s*"(\w+)"[^\n]*obs=')


def mutate_story(source: str, op: str, which: int, support: str) -> str:
    """``source`` with one mutation (a no-op where the story has nothing to mutate)."""
    observed = OBSERVED.findall(source)
    latents = [n for n in SAMPLE.findall(source) if n not in observed]
    if op == "remove-plate":
        plates = list(re.finditer(r"with pyro\.plate\([^\n]*\):", source))
        if plates:
            m = plates[which % len(plates)]
            return source[:m.start()] + "if True:" + source[m.end():]
    if op == "rename-to-observed" and observed and latents:
        name = latents[which % len(latents)]
        return source.replace(f'pyro.sample("{name}"', f'pyro.sample("{observed[0]}"', 1)
    if op == "latent-outside-plate":
        m = re.search(r"\n(\s*)with pyro\.plate\(", source)
        if m:
            line = f'\n{m.group(1)}pyro.sample("outside", dist.Normal(0.0, 1.0))'
            return source[:m.start()] + line + source[m.start():]
    if op == "event-shape":
        events = list(re.finditer(r"\.to_event\(\d\)", source))
        if events:
            m = events[which % len(events)]
            new = ["", ".to_event(2)", ".to_event(1).to_event(1)", ".expand([3]).to_event(1)"][which % 4]
            return source[:m.start()] + new + source[m.end():]
    if op == "wrong-support-observed":
        return source.replace("dist.Bernoulli(", f'_wrong_support("{support}", ', 1)
    if op == "wrong-support-latent":
        calls = list(re.finditer(r"dist\.(Normal|LogNormal)\(", source))
        if calls:
            m = calls[which % len(calls)]
            return source[:m.start()] + f'_wrong_support("{support}", ' + source[m.end():]
    return source


def build_story(recipe: tuple, ws: Workspace) -> Case:
    name, mutations = recipe
    source = (REPO / "examples" / "stories" / name).read_text()
    head, _, body = source.partition("\nimport ")
    source = head + PRELUDE + "\nimport " + body
    for op, which, support in mutations:
        source = mutate_story(source, op, which, support)
    path = Path.cwd() / f"mutant_{name}"
    path.write_text(source)
    argv = ["train", *BASE["train"], "--out", "runs", "--model", f"{path}:{STORIES[name]}"]
    argv[argv.index("{DATA}")] = str(ws.data)
    if name == "hierarchical.py" and any(op == "none" for op, _, _ in mutations):
        argv += ["--guide", f"{path}:HierarchicalGuide"]
    return Case(argv, [ws.data], f"stories {name} {mutations}", limit=180.0)


BOUNDARIES = {
    "cli": (cli_recipes, build_cli),
    "run-files": (run_file_recipes, build_run_file),
    "checkpoint": (checkpoint_recipes, build_checkpoint),
    "data": (data_recipes, build_data),
    "stories": (story_recipes, build_story),
}
"""Each boundary: (its recipes' strategy factory, what builds a case from a recipe)."""

__all__ = ["BOUNDARIES", "binary_images"]
