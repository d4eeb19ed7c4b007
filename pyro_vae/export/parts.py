"""The parts of a fitted story that ``pyro-vae export`` writes out, as plain tensor functions.

.. code-block:: text

    decoder   the story's x_dist(z, ...)        latents → the parameters of p(x | z), its mean
    encoder   the guide's site_dists(x) or      x (and the row's extras) → the parameters of
              z_dist(x, ...)                    q(z | x)
    networks  where the story (or the guide) has no such method: each ``nn.Module`` it calls
              directly (its attributes, or networks given to ``pyro.module``), as it is

A part is found by running the guide, then the model replayed on the guide's draws, once on
a few rows: what each method (or network) was called with becomes the part's example inputs
(their names are the method's arguments), and what it returned fixes the outputs: a
distribution gives its parameters as it holds them (``logits``, ``loc``, ``scale``,
``scale_tril``, ...) and, where it has one in closed form, its ``mean``; one built by
transforms (an IAF, a constrained site of the ``auto`` guide) gives its base's parameters and
its draw ``draw`` from a standard-normal noise input ``eps``, since its mean has no closed
form. A dict of distributions (the ``auto`` guide's sites) names each output after its site.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from pyro_vae.programs import Program
from pyro_vae.traces import trace_program

ROLES = ("decoder", "encoder")
METHODS = {"decoder": ("x_dist",), "encoder": ("site_dists", "z_dist")}
"""The methods that are a role's part, in the order they are looked for (on the story for
the decoder, on the guide for the encoder)."""


class ExportError(ValueError):
    """A part that cannot be exported; the message is one line that says why."""


@dataclass(frozen=True)
class Part:
    """One exportable function: ``module(*inputs)`` returns the tuple of ``outputs``."""

    name: str
    """File stem: ``decoder``, ``encoder``, or ``encoder-z1_net`` for a network."""
    role: str
    """``decoder`` (the story's side) or ``encoder`` (the guide's)."""
    source: str
    """What it is, for people: ``VAE.x_dist``, ``the network z1_net of HierarchicalGuide``."""
    module: nn.Module
    inputs: dict[str, Tensor]
    """Example inputs in call order; the batched ones are ``[N, ...]``, rows of the data."""
    batched: tuple[str, ...]
    """Inputs whose first dimension is the batch (dynamic in the exported program)."""
    outputs: tuple[str, ...]
    law: str = ""
    """The distribution it reads, e.g. ``Independent(BernoulliLogits, 1)``; empty for a
    network that returns tensors."""


class Noise:
    """The standard-normal noise of a transformed distribution's draw: made (and kept, by
    name) when the outputs are laid out, read from the inputs once they are known."""

    def __init__(self, given: dict[str, Tensor] | None = None) -> None:
        self.given = given
        self.made: dict[str, Tensor] = {}

    def __call__(self, name: str, like: Tensor) -> Tensor:
        if self.given is not None:
            return self.given[name]
        self.made[name] = torch.randn_like(like)
        return self.made[name]


def law_name(d: Distribution) -> str:
    """``Independent(BernoulliLogits, 1)``, ``TransformedDistribution(Normal; ExpTransform)``."""
    if isinstance(d, Independent):
        return f"Independent({law_name(d.base_dist)}, {d.reinterpreted_batch_ndims})"
    if isinstance(d, TransformedDistribution):
        steps = ", ".join(type(t).__name__ for t in d.transforms)
        return f"{type(d).__name__}({law_name(d.base_dist)}; {steps})"
    return type(d).__name__


def _innermost(d: Distribution) -> Distribution:
    while isinstance(d, Independent):
        d = d.base_dist
    return d


def _parameters(d: Distribution) -> dict[str, Tensor]:
    """The parameters the distribution holds, as given (not those it would derive)."""
    d = _innermost(d)
    held = vars(d)
    return {k: held[k] for k in d.arg_constraints if isinstance(held.get(k), Tensor)}


def law_tensors(d: Distribution, prefix: str, noise: Noise, mean: bool) -> dict[str, Tensor]:
    """Named tensors of one distribution (see the module's docstring); ``mean``: include the
    mean also where it is one of the parameters (a decoder's mean image)."""
    if isinstance(d, TransformedDistribution):
        base = _innermost(d.base_dist)
        if not isinstance(base, Normal):
            raise ExportError(f"a transformed {law_name(d)} draws from a {type(base).__name__} "
                              f"base, whose noise cannot be given as a standard-normal input")
        value = base.loc + base.scale * noise(f"{prefix}eps", base.loc)
        for t in d.transforms:
            value = t(value)
        return {**{f"{prefix}base_{k}": v for k, v in _parameters(base).items()},
                f"{prefix}draw": value}
    out = {f"{prefix}{k}": v for k, v in _parameters(d).items()}
    try:
        m = d.mean
    except NotImplementedError:
        m = None
    if m is not None and (mean or all(m is not v for v in out.values())):
        out[f"{prefix}mean"] = m
    if not out:
        raise ExportError(f"{law_name(d)} holds no tensor parameters and has no mean")
    return out


def flat_tensors(value: Any, noise: Noise, mean: bool, prefix: str = "") -> dict[str, Tensor]:
    """What a part's method or network returned, as named tensors."""
    if isinstance(value, Tensor):
        return {prefix.rstrip("_") or "output": value}
    if isinstance(value, Distribution):
        return law_tensors(value, prefix, noise, mean)
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, (tuple, list)) else None
    if items is None:
        raise ExportError(f"it returns a {type(value).__name__}, not tensors or distributions")
    out: dict[str, Tensor] = {}
    for key, item in items:
        out.update(flat_tensors(item, noise, mean, f"{prefix}{key}_"))
    return out


def laws(value: Any) -> str:
    """The distributions in what a part returned, named (``z: Independent(Normal, 1)``)."""
    if isinstance(value, Distribution):
        return law_name(value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {laws(v)}" for k, v in value.items() if laws(v))
    return ""


class Outputs(nn.Module):
    """``owner.<method>(...)`` as a function of tensors: its arguments ``arguments`` (those
    in ``keywords`` by keyword, the others by position), then the noise inputs ``noise``;
    returns the tensors named ``names`` (:func:`flat_tensors`)."""

    def __init__(self, owner: nn.Module, method: str, arguments: tuple[str, ...],
                 keywords: tuple[str, ...], noise: tuple[str, ...], names: tuple[str, ...],
                 mean: bool) -> None:
        super().__init__()
        self.owner = owner
        self.method, self.arguments, self.keywords = method, arguments, keywords
        self.noise, self.names, self.mean = noise, names, mean

    def call(self, tensors: tuple[Tensor, ...]) -> Any:
        """What the method returns for the first ``len(arguments)`` of ``tensors``."""
        given = dict(zip(self.arguments, tensors))
        return getattr(self.owner, self.method)(
            *(v for k, v in given.items() if k not in self.keywords),
            **{k: v for k, v in given.items() if k in self.keywords})

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        value = self.call(tensors)
        noise = Noise(dict(zip(self.noise, tensors[len(self.arguments):])))
        out = flat_tensors(value, noise, self.mean)
        return tuple(out[n] for n in self.names)


@dataclass(frozen=True)
class Call:
    """One recorded call of a part: who, which method, its arguments by name."""

    owner: nn.Module
    method: str
    arguments: dict[str, Any]
    keywords: tuple[str, ...]
    """The arguments passed by keyword (the others go by position, in order)."""
    name: str
    source: str


def make_part(call: Call, role: str, rows: int) -> Part:
    """The :class:`Part` of a recorded call, its outputs laid out by running it once."""
    for arg, value in call.arguments.items():
        if not isinstance(value, Tensor):
            raise ExportError(f"cannot export {call.source}: its argument {arg!r} is a "
                              f"{type(value).__name__}, not a tensor")
    module = Outputs(call.owner, call.method, tuple(call.arguments), call.keywords, (), (),
                     role == "decoder")
    noise = Noise()
    with torch.no_grad(), pyro.validation_enabled(False):
        value = module.call(tuple(call.arguments.values()))
        try:
            module.names = tuple(flat_tensors(value, noise, module.mean))
        except ExportError as err:
            raise ExportError(f"cannot export {call.source}: {err}") from None
    module.noise = tuple(noise.made)
    inputs = {**call.arguments, **noise.made}
    batched = tuple(k for k, v in inputs.items() if v.dim() and v.shape[0] == rows)
    return Part(call.name, role, call.source, module, inputs, batched, module.names, laws(value))


# ---------------------------------------------------------------- finding the calls


def _story(program: nn.Module) -> Any:
    return program.fn if isinstance(program, Program) else program


def _label(program: nn.Module) -> str:
    story = _story(program)
    return getattr(program, "name", None) if not isinstance(story, nn.Module) \
        else type(story).__name__


@contextlib.contextmanager
def recorded_methods(owner: Any, names: tuple[str, ...]) -> Iterator[dict[str, tuple]]:
    """While open, the first call of each of ``owner``'s methods ``names`` is recorded:
    ``{name: (bound method, args, kwargs)}``."""
    seen: dict[str, tuple] = {}
    patched = []
    for name in names:
        if not isinstance(owner, nn.Module) or not callable(getattr(type(owner), name, None)):
            continue
        bound = getattr(owner, name)

        def record(*args, _name=name, _bound=bound, **kwargs):
            seen.setdefault(_name, (_bound, args, kwargs))
            return _bound(*args, **kwargs)

        object.__setattr__(owner, name, record)  # the instance's, over the class's method
        patched.append(name)
    try:
        yield seen
    finally:
        for name in patched:
            vars(owner).pop(name, None)


@contextlib.contextmanager
def recorded_networks(program: nn.Module) -> Iterator[list[tuple[nn.Module, tuple]]]:
    """While open, every ``nn.Module`` that ``program`` (or the story it wraps) calls itself
    is recorded, once, with its positional arguments: ``(module, args)``."""
    outer = (program, _story(program))
    stack: list[nn.Module] = []
    calls: list[tuple[nn.Module, tuple]] = []

    def before(module: nn.Module, args: tuple) -> None:
        mine = bool(stack) and stack[0] is program and all(
            any(m is o for o in outer) for m in stack)
        if mine and not any(module is o for o in outer) and all(module is not c for c, _ in calls):
            calls.append((module, args))
        stack.append(module)

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        stack.pop()

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _network_names(program: nn.Module) -> dict[int, str]:
    """A name for each network of ``program``: its attribute path in the story, or the name
    a function story gave it in ``pyro.module``."""
    names: dict[int, str] = {}
    story = _story(program)
    if isinstance(story, nn.Module):
        names.update({id(m): n for n, m in story.named_modules() if n})
    if isinstance(program, Program):
        for site in program.param_names:
            module, sep, _ = site.partition("$$$")
            if sep:
                names.setdefault(id(program.param(site)), module)
    return names


def _network_calls(program: nn.Module, recorded: list[tuple[nn.Module, tuple]], role: str
                   ) -> list[Call]:
    names = _network_names(program)
    calls = []
    for i, (module, args) in enumerate(recorded):
        if not any(isinstance(a, Tensor) for a in args):
            continue  # a prior p(z) called without data: not a function of the rows
        first = next(iter(module.parameters()), None)
        name = names.get(id(module)) or names.get(id(first)) or f"{type(module).__name__}{i}"
        arguments, keywords = named_arguments(module.forward, args, {})
        calls.append(Call(module, "forward", arguments, keywords, f"{role}-{name}",
                          f"the network {name} of {_label(program)}"))
    return calls


def named_arguments(fn: Callable, args: tuple, kwargs: dict) -> tuple[dict[str, Any], tuple]:
    """The arguments of a call ``fn(*args, **kwargs)`` by name, in order (``*rest`` as
    ``rest0``, ``rest1``, ...), and the names that are passed by keyword."""
    signature = inspect.signature(fn)
    out: dict[str, Any] = {}
    keywords: list[str] = []
    for name, value in signature.bind(*args, **kwargs).arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            out.update({f"{name}{i}": v for i, v in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
            keywords += list(value)
        else:
            out[name] = value
            keywords += [name] if kind is inspect.Parameter.KEYWORD_ONLY else []
    return out, tuple(keywords)


def _method_call(owner: Any, method: str, bound: Callable, args: tuple, kwargs: dict,
                 role: str, who: str) -> Call:
    arguments, keywords = named_arguments(bound, args, kwargs)
    return Call(owner, method, arguments, keywords, role, f"{who}.{method}")


def find_calls(model: nn.Module, guide: nn.Module, x: Tensor, batch: dict[str, Tensor]
               ) -> dict[str, list[Call]]:
    """The decoder's and the encoder's calls, from one run of the guide on ``x`` ``[N, D]``
    (and its rows' extras ``batch``) and of the model replayed on the guide's draws."""
    programs = {"decoder": model, "encoder": guide}
    with contextlib.ExitStack() as stack:
        methods = {r: stack.enter_context(recorded_methods(_story(p), METHODS[r]))
                   for r, p in programs.items()}
        networks = {r: stack.enter_context(recorded_networks(p)) for r, p in programs.items()}
        drawn = trace_program(guide, x, batch)
        trace_program(poutine.replay(model, trace=drawn), x, batch)
    found = {}
    for role, program in programs.items():
        chosen = next((m for m in METHODS[role] if m in methods[role]), None)
        if chosen is None:
            found[role] = _network_calls(program, networks[role], role)
        else:
            bound, args, kwargs = methods[role][chosen]
            found[role] = [_method_call(_story(program), chosen, bound, args, kwargs, role,
                                        _label(program))]
    return found


def find_parts(model: nn.Module, guide: nn.Module, x: Tensor, batch: dict[str, Tensor],
               roles: tuple[str, ...] = ROLES) -> list[Part]:
    """The parts of ``roles`` of a fitted ``model`` and ``guide`` (:class:`Program` s or
    plain modules), laid out on the rows ``x`` ``[N, D]`` and their extras ``batch``.

    Raises:
        ExportError: a role has nothing to export (its story is a function with no
            ``nn.Module`` network), or a part's call or result is not tensors.
    """
    calls = find_calls(model, guide, x, batch)
    parts = []
    for role in roles:
        if not calls[role]:
            who = _label(model if role == "decoder" else guide)
            raise ExportError(
                f"{who} has no {role} to export: it has no {' or '.join(METHODS[role])} "
                f"method and calls no nn.Module network (its parameters are pyro.param "
                f"sites read by Python code); write its networks as nn.Modules to export them")
        parts += [make_part(call, role, x.shape[0]) for call in calls[role]]
    return parts
