"""What a retriever is, and the registry that names the kinds.

A retriever turns one query into ranked :class:`ContextItem`s.  A new kind is one
class registered with ``@RETRIEVERS.register("kind")`` and one entry in the
config file's ``retrievers`` table; its options arrive as ``ComponentConfig``
extras.  That is also the extension point for a semantic (embedding) retriever:
load the model in :meth:`Retriever.prepare`, embed and search in
:meth:`Retriever.search`, and give items ``path:start-end`` ids so they
deduplicate against the workspace index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dispatch.config import ComponentConfig
from dispatch.errors import ConfigError
from dispatch.models import ContextItem
from dispatch.common.registry import Registry


@dataclass
class RetrievalEnv:
    """What every retriever may rely on, whatever its kind."""

    workspace: Path
    cache_dir: Optional[Path] = None
    top_k: int = 8
    facts: dict[str, Any] = field(default_factory=dict)  # filled by retrievers, read by gather


class Retriever:
    """Base class: override :meth:`search`; :meth:`prepare` and :meth:`close` if needed."""

    kind: str = "?"

    def __init__(self, name: str, config: ComponentConfig, env: RetrievalEnv) -> None:
        self.name = name
        self.config = config
        self.env = env
        self.options = config.options
        self.top_k = self.option("top_k", env.top_k, int)

    def prepare(self) -> None:
        """Get ready to answer (open or update an index, check a key). Raise if it cannot."""

    def search(self, query: str, top_k: int) -> list[ContextItem]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`prepare` acquired."""

    def option(self, key: str, default: Any, cast: type = str) -> Any:
        """An option cast to ``cast``, with a config error naming it when it will not cast.

        Numbers are strict, as everywhere in the config: ``true`` or ``"5"`` is not a number, ``2.5`` not an int.
        """
        value = self.options.get(key, default)
        if cast in (int, float) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or (cast is int and not isinstance(value, int))):
            raise ConfigError(f"retrievers.{self.name}.{key}: expected {cast.__name__}, got {value!r}")
        try:
            return cast(value) if value is not None else None
        except (TypeError, ValueError):
            raise ConfigError(f"retrievers.{self.name}.{key}: expected {cast.__name__}, got {value!r}") from None


RETRIEVERS: Registry[Retriever] = Registry("retriever")


def build_retriever(name: str, config: ComponentConfig, env: RetrievalEnv) -> Retriever:
    return RETRIEVERS.get(config.kind)(name, config, env)
