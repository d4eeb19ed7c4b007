"""Name → value registries for swappable parts.

Each kind of part (prior, likelihood, decoder, encoder, guide, objective,
dataset) has one :class:`Registry`. A registry is a plain ``dict`` filled by
its :meth:`Registry.register` decorator, which refuses a name that is already
taken; the CLI, the examples and the parametrized tests all read the same dict.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry has; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry(dict):
    """A dict of named parts of one ``kind`` (e.g. ``"prior"``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated value under ``name``; duplicates are refused."""

        def add(value: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = value
            return value

        return add

    def lookup(self, name: str):
        """The entry under ``name``, or an error that lists every valid name."""
        try:
            return self[name]
        except KeyError:
            valid = ", ".join(sorted(self))
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}"
            ) from None
