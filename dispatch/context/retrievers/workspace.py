"""The embedded default retriever: the workspace's own full-text index.

Options (all optional): ``top_k``, ``max_bytes`` (files above are skipped,
default 1 MB), ``exclude`` (gitignore-style patterns replacing the built-in
excludes; ``.git/`` is always added), ``chunk_lines`` (target chunk length).
"""
from __future__ import annotations

from typing import Optional

from dispatch.errors import ConfigError
from dispatch.models import ContextItem
from dispatch.context.chunking import ChunkOptions
from dispatch.context.index import DEFAULT_MAX_BYTES, WorkspaceIndex
from dispatch.context.tokens import count_tokens
from dispatch.context.walk import DEFAULT_EXCLUDES
from dispatch.context.retrievers.base import RETRIEVERS, Retriever

DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".markdown")


@RETRIEVERS.register("workspace")
class WorkspaceRetriever(Retriever):
    index: Optional[WorkspaceIndex] = None

    def prepare(self) -> None:
        excludes = self.options.get("exclude", DEFAULT_EXCLUDES)
        if isinstance(excludes, str) or not all(isinstance(p, str) for p in excludes):
            raise ConfigError(f"retrievers.{self.name}.exclude: expected a list of patterns")
        excludes = tuple(dict.fromkeys([".git/", *excludes]))
        target = self.option("chunk_lines", 50, int)
        chunking = ChunkOptions(target=target, min_lines=max(1, target * 3 // 5), max_lines=target * 7 // 5)
        self.index = WorkspaceIndex(self.env.workspace, self.env.cache_dir,
                                    max_bytes=self.option("max_bytes", DEFAULT_MAX_BYTES, int),
                                    excludes=excludes, chunking=chunking)
        stats = self.index.update()
        self.env.facts["index"] = {**stats.as_dict(), "db": str(self.index.db_path)}
        self.env.facts["files"] = list(self.index.files())

    def search(self, query: str, top_k: int) -> list[ContextItem]:
        assert self.index is not None, "prepare() first"
        items = []
        for hit in self.index.query(query, top_k):
            item_id = f"{hit.path}:{hit.start}-{hit.end}"
            items.append(ContextItem(
                id=item_id, source=hit.path, content=hit.body, score=round(hit.score, 4),
                tokens=count_tokens(hit.body), query=query, kind="doc" if hit.path.lower().endswith(DOC_SUFFIXES) else "code", retriever=self.name,
                metadata={"path": hit.path, "start": hit.start, "end": hit.end}))
        return items

    def close(self) -> None:
        if self.index is not None:
            self.index.close()
            self.index = None
