"""Named registries: a new agent, validator or retriever kind is one class plus
one config entry, never another ``elif``.

A kind registers itself with a decorator; configuration names the kind.  A kind
whose module is costly to import (an HTTP stack, a schema library) can be
registered by module path instead, and is imported the first time it is asked
for: a run that uses no such kind never pays for it.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from dispatch.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a kind name (``"shell"``, ``"rules"``, ...) to the class that implements it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._kinds: dict[str, type[T]] = {}
        self._lazy: dict[str, str] = {}  # kind -> the module that registers it on import

    def register(self, kind: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            self._kinds[kind] = cls
            cls.kind = kind  # type: ignore[attr-defined]
            return cls
        return add

    def register_lazy(self, kind: str, module: str) -> None:
        """``kind`` is registered by importing ``module`` (with its decorator), the first time it is needed."""
        self._lazy[kind] = module

    def get(self, kind: str) -> type[T]:
        if kind not in self._kinds and kind in self._lazy:
            importlib.import_module(self._lazy[kind])
        try:
            return self._kinds[kind]
        except KeyError:
            raise ConfigError(f"unknown {self.what} kind '{kind}' (known: {', '.join(self.kinds()) or 'none'})") \
                from None

    def kinds(self) -> list[str]:
        return sorted(set(self._kinds) | set(self._lazy))

    def __contains__(self, kind: str) -> bool:
        return kind in self._kinds or kind in self._lazy
