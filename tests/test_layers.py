"""The engine's layering, read from the source's own import statements (every one: module
level, inside functions and under ``TYPE_CHECKING``).

.. code-block:: text

    foundation   pyro_vae/*.py (flat: programs, traces, config, pixels, files, jit, ...)
    models       pyro_vae.models (models/)
    guides       pyro_vae.guides (guides/; its encoders share the models' networks)
    data         pyro_vae.data
    stories, infer, evaluation, explore siblings: never import each other
    diagnostics
    runs                                (its metrics lines carry diagnose's collapse measures)
    export                              a run's networks as files (it loads runs)
    cli
    the face     pyro_vae/__init__.py (it imports by name, on first use)

Each layer imports only the layers below it; across wings only a wing's face
(``pyro_vae.<wing>``, whose ``__init__`` declares ``__all__``); no underscore name from
another module (tests, examples and benchmarks included); no circle; no module over 500
lines. Examples import only from ``pyro_vae``, ``pyro_vae.models`` and ``pyro_vae.guides``.
A failure names both files and the name. ``python tests/test_layers.py [ROOT]`` prints the
modules per folder and the longest import chain of a checkout (``ROOT``, default this one).
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WINGS = {"models": 1, "guides": 2, "data": 3, "stories": 4, "infer": 4, "evaluation": 4,
         "explore": 4, "diagnostics": 5, "runs": 6, "export": 7, "cli": 8}
FACE_RANK = 9
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    """One ``from pyro_vae.X import name`` (or ``import pyro_vae.X``) in ``path``."""

    path: Path
    line: int
    module: str
    name: str | None


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in ("models", "guides"):  # installed as pyro_vae.models / pyro_vae.guides
        parts = ["pyro_vae", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library(root: Path = REPO) -> dict[str, Path]:
    """Every module of the installed package: ``{dotted name: file}``."""
    files = [p for d in ("pyro_vae", "models", "guides") for p in sorted((root / d).rglob("*.py"))]
    return {module_name(p, root): p for p in files}


def wing(module: str) -> str | None:
    """The wing a module belongs to; None for the foundation and the face."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def rank(module: str) -> int:
    if module in ("pyro_vae", "pyro_vae.__main__"):
        return FACE_RANK
    w = wing(module)
    return WINGS[w] if w else 0


def imports(path: Path, modules: dict[str, Path]) -> list[Import]:
    """The pyro_vae imports of one file, each resolved to the module it reads from (``from
    pyro_vae import distributed`` reads the module ``pyro_vae.distributed``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(path, node.lineno, a.name, None) for a in node.names
                    if a.name.split(".")[0] == "pyro_vae"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "pyro_vae":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append(Import(path, node.lineno, sub, None) if sub in modules
                           else Import(path, node.lineno, node.module, a.name))
    return out


def where(imp: Import, modules: dict[str, Path], root: Path = REPO) -> str:
    target = modules.get(imp.module)
    what = f"{imp.module}.{imp.name}" if imp.name else imp.module
    return (f"{imp.path.relative_to(root)}:{imp.line} imports {what}"
            f" ({target.relative_to(root) if target else 'no such module'})")


def layer_violations(root: Path = REPO) -> list[str]:
    modules = library(root)
    found = []
    for name, path in modules.items():
        for imp in imports(path, modules):
            found += [f"{where(imp, modules, root)}: {why}" for why in _breaks(name, imp.module)]
    return found


def _breaks(importer: str, target: str) -> list[str]:
    """Why an import of ``target`` by ``importer`` breaks the layers (empty: it does not)."""
    if rank(importer) == FACE_RANK:
        return []
    mine, theirs = wing(importer), wing(target)
    if target == "pyro_vae":
        return ["the top-level face is for users; import from the module that defines the name"]
    if rank(target) > rank(importer):
        return [f"runs up a layer ({theirs or 'foundation'} is above {mine or 'the foundation'})"]
    if theirs is not None and theirs != mine:
        if rank(target) == rank(importer):
            return [f"{mine} and {theirs} are siblings, which never import each other"]
        if target != f"pyro_vae.{theirs}":
            return [f"reaches inside the {theirs} wing; import from its face pyro_vae.{theirs}"]
    return []


def private_imports(root: Path = REPO) -> list[str]:
    modules = library(root)
    files = list(modules.values()) + [p for d in ("tests", "examples", "benchmarks")
                                      for p in sorted((root / d).rglob("*.py"))]
    return [f"{where(imp, modules, root)}: an underscore name of another module"
            for path in files for imp in imports(path, modules)
            if imp.name is not None and imp.name.startswith("_")
            or imp.name is None and any(part.startswith("_") for part in imp.module.split(".")[1:])]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module → the library modules it imports (a wing's face counts as its ``__init__``)."""
    modules = library(root)
    return {name: {imp.module for imp in imports(path, modules) if imp.module in modules}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (in a graph without circles)."""
    memo: dict[str, list[str]] = {}

    def chain(v: str, seen: frozenset) -> list[str]:
        if v in memo:
            return memo[v]
        best = max((chain(w, seen | {v}) for w in graph.get(v, ()) if w not in seen),
                   key=len, default=[])
        memo[v] = [v, *best]
        return memo[v]

    return max((chain(v, frozenset()) for v in sorted(graph)), key=len, default=[])


# ---------------------------------------------------------------------------- the tests


def test_each_layer_imports_only_the_layers_below_it_through_their_faces():
    assert layer_violations() == []


def test_no_module_imports_an_underscore_name_of_another():
    assert private_imports() == []


def test_no_circles_among_the_modules():
    assert cycles(import_graph()) == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in library().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("face", ["pyro_vae.data", "pyro_vae.stories", "pyro_vae.infer",
                                  "pyro_vae.evaluation", "pyro_vae.diagnostics", "pyro_vae.runs",
                                  "pyro_vae.export", "pyro_vae.explore", "pyro_vae.models", "pyro_vae.guides"])
def test_every_wing_declares_its_face(face):
    module = importlib.import_module(face)
    assert module.__all__, f"{face} declares no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == [], f"{face}.__all__ names what it does not hold"


def test_the_top_level_face_names_resolve_and_shadow_no_module():
    import pyro_vae

    modules = library()
    for name in pyro_vae.__all__:
        value = getattr(pyro_vae, name)
        if f"pyro_vae.{name}" in modules:  # a wing or module: the attribute must be it
            assert value is importlib.import_module(f"pyro_vae.{name}"), name
    # fit, evaluate and diagnose are functions, not modules of the same name.
    assert callable(pyro_vae.fit) and callable(pyro_vae.evaluate) and callable(pyro_vae.diagnose)
    for wing_face in ("pyro_vae.infer", "pyro_vae.evaluation", "pyro_vae.diagnostics"):
        face = importlib.import_module(wing_face)
        for name in face.__all__:
            assert f"{wing_face}.{name}" not in modules, f"{wing_face}.{name} shadows a module"


def test_examples_import_only_the_public_faces():
    import pyro_vae

    modules = library()
    # The top-level face, and the wings and modules it names (``from pyro_vae import figures``).
    allowed = {"pyro_vae", *(f"pyro_vae.{n}" for n in pyro_vae.__all__)}
    bad = [where(imp, modules) for p in sorted((REPO / "examples").rglob("*.py"))
           for imp in imports(p, modules) if imp.module not in allowed]
    assert bad == []


def test_the_checker_names_both_files_and_the_name(tmp_path):
    """A new violation is caught and named: a foundation module that reaches into a wing."""
    for d in ("pyro_vae/infer", "models", "guides"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "pyro_vae/__init__.py").write_text("")
    (tmp_path / "pyro_vae/infer/__init__.py").write_text("from pyro_vae.infer.loop import fit\n")
    (tmp_path / "pyro_vae/infer/loop.py").write_text("def fit(): ...\ndef _helper(): ...\n")
    (tmp_path / "pyro_vae/traces.py").write_text("from pyro_vae.infer.loop import _helper\n")
    found = layer_violations(tmp_path)
    assert len(found) == 1 and found[0].startswith("pyro_vae/traces.py:1 imports pyro_vae.infer.loop._helper")
    assert "pyro_vae/infer/loop.py" in found[0] and "runs up a layer" in found[0]
    assert private_imports(tmp_path) and "_helper" in private_imports(tmp_path)[0]
    (tmp_path / "pyro_vae/infer/loop.py").write_text("from pyro_vae.traces import x\n")
    assert cycles(import_graph(tmp_path)) == [["pyro_vae.infer.loop", "pyro_vae.traces"]]


@pytest.mark.parametrize("old", ["pyro_vae.build", "pyro_vae.objectives", "pyro_vae.checkpoint",
                                 "pyro_vae.streams", "pyro_vae.figures"])
def test_old_paths_keep_working_for_one_release_with_a_warning(old):
    from pyro_vae.deprecated import ALIASES, MOVED_NAMES

    module = importlib.import_module(old)
    name = {"pyro_vae.build": "build_vae", "pyro_vae.objectives": "JitFallbackWarning",
            "pyro_vae.checkpoint": "atomic_write", "pyro_vae.streams": "STREAM_SHARE",
            "pyro_vae.figures": "plot_k_curve"}[old]
    assert old in ALIASES or old in MOVED_NAMES
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} has moved to"):
        value = getattr(module, name)
    homes = ALIASES.get(old) or (MOVED_NAMES[old][name],)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert any(getattr(importlib.import_module(h), name, None) is value for h in homes)
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def summary(root: Path) -> str:
    """Modules per folder and the longest import chain of the checkout at ``root``."""
    modules = library(root)
    folders: dict[str, int] = {}
    for name, path in modules.items():
        folder = str(path.parent.relative_to(root))
        folders[folder] = folders.get(folder, 0) + 1
    graph = import_graph(root)
    loops = cycles(graph)
    lines = [f"{n:3d}  {folder}/" for folder, n in sorted(folders.items())]
    lines.append(f"circles: {loops or 'none'}")
    chain = longest_chain(graph)  # with circles, the memo makes it a lower bound
    lines.append(f"longest import chain ({len(chain)} modules{', at least' if loops else ''}): "
                 + " -> ".join(chain))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO))
