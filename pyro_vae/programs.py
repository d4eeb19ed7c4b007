"""The story contract, in code: a Pyro program that owns its parameters, and the
handler that weights its latent sites from outside.

A *story* is a Pyro program ``model(x, **batch)``: ``x`` is ``[N, ...]``, its local
latents and observed sites sit in ``pyro.plate("data", N)``, and ``batch`` holds
per-row extras (labels ``y``), sliced with ``x`` wherever x is sliced. A *guide*
has the same signature. Both may be plain functions or ``nn.Module`` s.

:class:`Program` wraps either. Its ``pyro.param`` statements are answered from the
program's own ``nn.Parameter`` s instead of Pyro's global parameter store, and the
parameters of every ``pyro.module`` it registers are kept with it, so a fit
trains, checkpoints and restores all of them and two fits never share state.
:class:`LatentScale` is how the engine applies β and KL warm-up.

This module is a leaf of the engine: it imports nothing from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

Batch = Mapping[str, Tensor]
"""Per-row extras of a batch of images (``{"y": [N]}``), sliced with x."""


class LatentScale(Messenger):
    """Multiply the log-density of every unobserved sample site by ``scale``.

    Applied around both model and guide, this weights the KL-type terms of the
    ELBO by β (a float, or a 0-dim tensor under ``torch.jit``) while observed
    sites keep weight 1, whatever the story names its sites.
    """

    def __init__(self, scale: float | Tensor) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn: Callable, scale: float | Tensor) -> Callable:
    """``fn`` with every latent site weighted by ``scale`` (identity for a float 1)."""
    if isinstance(scale, (int, float)) and scale == 1:
        return fn
    return LatentScale(scale)(fn)


class _ParamSites(Messenger):
    """Answers ``pyro.param`` messages from a :class:`Program`'s own parameters."""

    def __init__(self, program: "Program") -> None:
        super().__init__()
        self.program = program

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "param" and msg["value"] is None:
            msg["value"] = self.program._param_value(msg["args"], msg["kwargs"])
            msg["done"] = True


def _key(name: str) -> str:
    """A parameter name usable as an ``nn.Module`` attribute (no dots)."""
    return "p_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


class Program(nn.Module):
    """A Pyro program (a function or an ``nn.Module``) that owns its parameters.

    - ``pyro.param(name, init, constraint=c)``: the first call stores the
      unconstrained value ``biject_to(c).inv(init)`` as an ``nn.Parameter`` of this
      module (on the module's device); every call returns ``biject_to(c)`` of it.
    - ``pyro.module(name, net)``: ``net``'s parameters are kept by reference (unless
      the wrapped module already owns them), so the optimizer steps the network itself.
    - Per-row extras: ``forward(x, **batch)`` passes on only the ``batch`` fields
      the program's signature names (all of them for ``**kwargs``).

    After :meth:`freeze_sites` (the engine calls it once the optimizer exists) a
    parameter the program has not created before is refused with a sentence, so
    that no parameter is ever silently left out of training.
    """

    def __init__(self, fn: Callable, name: str | None = None) -> None:
        super().__init__()
        if isinstance(fn, nn.Module):
            self.story = fn
        else:
            object.__setattr__(self, "_fn", fn)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.params = nn.ParameterDict()
        self._constraints: dict[str, constraints.Constraint] = {}
        self._keys: dict[str, str] = {}
        self._refs: dict[str, Tensor] = {}
        self._frozen = False
        self.accepts = _accepted_keywords(fn)
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def fn(self) -> Callable:
        """The wrapped story or guide."""
        return self.story if "story" in self._modules else self._fn

    def forward(self, x: Tensor, **batch: Any) -> Any:
        kwargs = batch if self.accepts is None else {k: v for k, v in batch.items()
                                                      if k in self.accepts}
        with _ParamSites(self):
            return self.fn(x, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the program's parameters live (it follows ``.to()``)."""
        return self._anchor.device

    def freeze_sites(self, frozen: bool = True) -> None:
        """Refuse (``True``) or allow new ``pyro.param`` sites from now on."""
        self._frozen = frozen

    def param(self, name: str) -> Tensor:
        """The constrained value of parameter site ``name``."""
        return self._param_value((name,), {})

    @property
    def param_names(self) -> list[str]:
        return [*self._refs, *self._keys]

    def _param_value(self, args: tuple, kwargs: dict) -> Tensor:
        name = args[0]
        if name not in self._refs and name not in self._keys:
            self._create(name, args[1] if len(args) > 1 else None,
                         kwargs.get("constraint") or constraints.real)
        if name in self._refs:
            return self._refs[name]
        key = self._keys[name]
        return biject_to(self._constraints[key])(self.params[key])

    def _create(self, name: str, init: Any, constraint: constraints.Constraint) -> None:
        where = f"{self.name}: pyro.param({name!r})"
        if init is None:
            raise ValueError(f"{where} is read before it was created: give it an initial value")
        if self._frozen:
            raise ValueError(f"{where} first appeared after training started (the optimizer "
                             f"already holds every parameter); it would never be trained. "
                             f"Create every parameter on every call of the program")
        init = init() if callable(init) and not isinstance(init, Tensor) else init
        if isinstance(init, nn.Parameter) and constraint is constraints.real \
                and any(p is init for p in self._owned()):
            self._refs[name] = init  # a network the wrapped module already owns
            return
        key = _key(name)
        if key in self.params:
            raise ValueError(f"{where}: its name clashes with another parameter's ({key!r})")
        if isinstance(init, nn.Parameter) and constraint is constraints.real:
            self.params[key] = init  # a pyro.module network's own parameter, by reference
        else:
            value = biject_to(constraint).inv(torch.as_tensor(init).detach())
            self.params[key] = nn.Parameter(value.to(self._anchor.device).clone())
        self._keys[name] = key
        self._constraints[key] = constraint

    def _owned(self) -> list[nn.Parameter]:
        return list(self.story.parameters()) if "story" in self._modules else []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # The wrapped story's own helpers (e.g. the built-in VAE's z_dist) stay reachable.
            modules = self.__dict__.get("_modules", {})
            inner = modules["story"] if "story" in modules else self.__dict__.get("_fn")
            if inner is None:
                raise
            return getattr(inner, name)


def _arguments_after_x(fn: Callable) -> list[inspect.Parameter] | None:
    """The parameters of ``fn(x, ...)`` (its ``forward`` for a module) after x; ``None``
    where Python cannot tell (a builtin)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        return list(inspect.signature(target).parameters.values())[1:]
    except (TypeError, ValueError):
        return None


def _named(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _accepted_keywords(fn: Callable) -> frozenset[str] | None:
    """Names ``fn(x, ...)`` takes after x; ``None`` when it takes ``**kwargs``."""
    params = _arguments_after_x(fn)
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in _named(params))


def required_keywords(program: Program) -> list[str]:
    """Per-row fields the program cannot run without (arguments after x with no default)."""
    return [p.name for p in _named(_arguments_after_x(program.fn) or []) if p.default is p.empty]


def check_fields(program: Program, have: Iterable[str], source: str) -> None:
    """The per-row fields the program cannot run without must be among ``have``, the fields
    that ``source`` (the data) provides."""
    have = set(have)
    for name in required_keywords(program):
        if name not in have:
            raise ValueError(f"{program.name} takes {name!r} for every row, but {source} "
                             f"provides {sorted(have) or 'no per-row fields'} (labels arrive as y)")


def as_program(fn: Callable, name: str | None = None) -> Program:
    """``fn`` as a :class:`Program` (itself when it already is one)."""
    if isinstance(fn, Program):
        return fn
    if not callable(fn):
        raise TypeError(f"a story or guide must be callable, got {type(fn).__name__}")
    return Program(fn, name)


def unique_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters of all ``modules``, each once (a VampPrior shares the guide's)."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradients for the trained parameters while z alone is inferred."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            # pyro.module says so of every frozen parameter of a network in training mode.
            warnings.filterwarnings("ignore", message=".*not registered in the param store")
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside, torch's CPU generator (and ``device``'s, if it is a CUDA device) starts from
    ``seed``; after, the caller's random state is as it was. With ``seed=None`` the block
    draws from the caller's stream and advances it, as code without a seed does."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=cuda_devices(torch.device(device))):
        torch.manual_seed(seed)
        yield


def unit_seed(seed: int, *unit: object) -> int:
    """The seed of one unit of a long computation (a chunk of images, a stage), from the
    computation's ``seed`` and the unit's name, e.g. ``unit_seed(0, "iwae", 3)``: a unit's
    draws then depend on nothing but these, not on which units ran before it in the same
    process, so a stopped computation can redo any unit exactly. In [0, 2**32), which every
    generator Pyro seeds (torch, numpy, random) accepts."""
    text = "/".join(str(part) for part in (seed, *unit))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def cuda_devices(*where: Tensor | torch.device) -> list[torch.device]:
    """The CUDA device among tensors or devices ``where`` (at most one), for
    ``torch.random.fork_rng(devices=...)``: forking every visible GPU's generator costs a
    synchronisation each, and a CPU-only fork must not initialise CUDA at all."""
    devices = [w if isinstance(w, torch.device) else w.device for w in where]
    return [d for d in devices if d.type == "cuda"][:1]
