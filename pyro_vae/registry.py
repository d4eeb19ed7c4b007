"""Name → value registries for swappable parts.

Each kind of part (prior, likelihood, decoder, encoder, guide, objective,
dataset) has one :class:`Registry`. A registry is a plain ``dict`` filled by
its :meth:`Registry.register` decorator, which refuses a name that is already
taken; the CLI, the examples and the parametrized tests all read the same dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

from pyro_vae.config import options_from_dict

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a part that has none."""


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry has; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry(dict):
    """A dict of named parts of one ``kind`` (e.g. ``"prior"``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.options_of: dict[str, type] = {}

    def register(self, name: str, options: type | None = None) -> Callable[[T], T]:
        """Decorator: add the decorated value under ``name``; duplicates are refused.

        ``options`` is the part's own settings, a frozen dataclass declared beside
        its builder (fields with defaults, and ``metadata`` giving ``help``, the
        ``parse`` of its command-line flag, and an optional shared ``alias``)."""

        def add(value: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = value
            self.options_of[name] = options or NoOptions
            return value

        return add

    def options(self, name: str, given: Mapping[str, Any] | None = None) -> Any:
        """The options of part ``name``: its defaults, overridden by ``given`` (unknown keys
        and wrong types are refused, naming the part)."""
        self.lookup(name)
        return options_from_dict(self.options_of[name], dict(given or {}),
                                 f"{self.kind} {name!r} options")

    def lookup(self, name: str):
        """The entry under ``name``, or an error that lists every valid name."""
        try:
            return self[name]
        except KeyError:
            valid = ", ".join(sorted(self))
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}"
            ) from None
