"""A tiny name → entry registry, shared by models, pruning and quantization methods.

Registering is enough to be listed by :func:`workbench.methods` and to be picked up by the
parametrized contract tests (the timm ``register_model`` pattern).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

from workbench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Parameters
    ----------
    kind : str
        What the entries are, used in error messages (``"pruning method"``).

    Examples
    --------
    >>> r = Registry("greeting")
    >>> @r.register("hello")
    ... def hello():
    ...     return "hi"
    >>> r["hello"]()
    'hi'
    >>> r.names()
    ['hello']
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``entry`` under ``name`` (names are unique)."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, Any]]:
        return sorted(self._entries.items())
