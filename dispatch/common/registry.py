"""Named registries: a new agent, validator or retriever kind is one class plus
one config entry, never another ``elif``.

A kind registers itself with a decorator; configuration names the kind.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from dispatch.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a kind name (``"shell"``, ``"rules"``, ...) to the class that implements it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._kinds: dict[str, type[T]] = {}

    def register(self, kind: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            self._kinds[kind] = cls
            cls.kind = kind  # type: ignore[attr-defined]
            return cls
        return add

    def get(self, kind: str) -> type[T]:
        try:
            return self._kinds[kind]
        except KeyError:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise ConfigError(f"unknown {self.what} kind '{kind}' (known: {known})") from None

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, kind: str) -> bool:
        return kind in self._kinds
