"""Named registries of algorithms: filled by decorators next to their family, looked up by a spec's tag.

Every registry (quantization methods, allocators, evaluators, rewards, answer extractors) is a
`Registry`: `register(name)` refuses a second entry under the same name, and `lookup(name)` raises a
`SpecError` that names the spec field and lists the valid names. It lives in `workers/` because every
registry does, and `SpecError` is one of the platform modules workers may import.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bitsmith.platform.errors import SpecError

T = TypeVar("T")
F = TypeVar("F")


class Registry(Generic[T]):
    """Name -> entry, for one spec field (`field`) whose values are the names of `what`s."""

    def __init__(self, field: str, what: str) -> None:
        self.field, self.what = field, what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Store `entry` under `name`; a second entry under one name is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the decorated function under `name` and return it unchanged."""
        def add(fn: F) -> F:
            self.add(name, fn)  # type: ignore[arg-type]
            return fn
        return add

    def lookup(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise SpecError(f"{self.field}: unknown {self.what} {name!r}; expected one of "
                            f"{', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
