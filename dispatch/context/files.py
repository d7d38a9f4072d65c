"""Reading a ``file:`` requirement straight from the workspace.

When phase 0 did not gather the file a task names (context was off, phase 0
failed, or the file simply did not rank), phase 3 reads it itself, because a
task that names a file needs it more than it needs anything ranked.  Limits:

* only inside the workspace (``..`` and symlinks out of it are refused), and only
  from a workspace this worker allows (``hostfs``: under ``DISPATCH_WORKSPACE_ROOTS``,
  never ``/`` or a system tree): ``workspace_path: "/"`` with ``file:etc/shadow``
  reads nothing;
* only regular files on ordinary file systems, at most ``max_bytes`` read;
* never a git-ignored, binary or over-``max_bytes`` file (an ignored ``.env``
  is not handed to an agent just because a task named it);
* a glob reads at most ``MAX_GLOB_FILES`` files, in path order;
* ``PATH:START-END`` reads that line range; the content is then cut to the
  task budget like any other item.

Reads are cached for the whole phase 3 call, so 1000 tasks naming one file read it once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dispatch.models import ContextItem
from dispatch.context.errors import ContextGatheringError
from dispatch.context.hostfs import allowed_workspace, read_regular
from dispatch.context.index import DEFAULT_MAX_BYTES
from dispatch.context.tokens import count_tokens
from dispatch.common.text import as_text
from dispatch.context.walk import IgnoreRules, iter_files, looks_binary

MAX_GLOB_FILES = 5
_RANGE = re.compile(r"^(.*?):(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True)
class FileRequirement:
    pattern: str                       # workspace-relative path or glob
    lines: Optional[tuple[int, int]]   # 1-based inclusive
    is_glob: bool


def parse_file_requirement(value: str, root: Optional[Path] = None) -> Optional[FileRequirement]:
    """``src/db.py``, ``src/*.py``, ``./src/db.py:10-40`` or an absolute path under ``root``."""
    text = value.strip().replace("\\", "/")
    lines = None
    match = _RANGE.match(text)
    if match:
        text, start, end = match.group(1), int(match.group(2)), int(match.group(3))
        lines = (max(1, min(start, end)), max(start, end))
    if text.startswith("/") and root is not None:
        try:
            text = Path(text).resolve().relative_to(root).as_posix()
        except ValueError:
            pass  # outside the workspace: it will match nothing and be refused
    while text.startswith("./"):
        text = text[2:]
    if not text:
        return None
    return FileRequirement(text, lines, any(ch in text for ch in "*?["))


class WorkspaceFiles:
    def __init__(self, workspace_path: str, max_bytes: int = DEFAULT_MAX_BYTES, max_chars: int = 200_000) -> None:
        try:
            self.root: Optional[Path] = allowed_workspace(workspace_path)
            self.refused: Optional[str] = None
        except ContextGatheringError as exc:  # nothing is read; phase 3 says why instead
            self.root, self.refused = None, str(exc)
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self._cache: dict[tuple[str, Optional[tuple[int, int]]], list[tuple[ContextItem, str]]] = {}
        self._listing: Optional[list[str]] = None
        self._rules: Optional[IgnoreRules] = None

    def read(self, value: str) -> list[tuple[ContextItem, str]]:
        """``[(item, reason), ...]`` for a ``file:`` value, empty when nothing may be read."""
        if self.root is None:
            return []
        req = parse_file_requirement(value, self.root)
        if req is None:
            return []
        key = (req.pattern, req.lines)
        if key not in self._cache:
            self._cache[key] = self._read(req)
        return self._cache[key]

    def _read(self, req: FileRequirement) -> list[tuple[ContextItem, str]]:
        if req.is_glob:
            import pathspec

            spec = pathspec.GitIgnoreSpec.from_lines([req.pattern])
            rels = [rel for rel in self._all_files() if spec.match_file(rel)][:MAX_GLOB_FILES]
        else:
            rels = [req.pattern]
        out = []
        for rel in rels:
            item = self._read_one(rel, req.lines, check_ignored=not req.is_glob)
            if item is not None:
                out.append((item, "read from the workspace (not in the gathered context)"))
        return out

    def _all_files(self) -> list[str]:
        if self._listing is None:
            assert self.root is not None
            self._listing = [entry.rel for entry in iter_files(self.root)]
        return self._listing

    def _read_one(self, rel: str, lines: Optional[tuple[int, int]], check_ignored: bool) -> Optional[ContextItem]:
        assert self.root is not None
        path = (self.root / rel).resolve()
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return None  # escapes the workspace
        if self._rules is None:
            self._rules = IgnoreRules(self.root)
        if check_ignored and self._rules.is_ignored(rel):
            return None
        try:
            if not path.is_file() or path.stat().st_size > self.max_bytes:
                return None
        except OSError:
            return None
        data = read_regular(path, self.max_bytes + 1)
        if data is None or len(data) > self.max_bytes:
            return None
        if looks_binary(data):
            return None
        all_lines = as_text(data).splitlines(keepends=True)
        first = lines[0] if lines else 1
        last = min(lines[1], len(all_lines)) if lines else len(all_lines)
        if first > last:
            return None
        chosen, chars = [], 0
        for line in all_lines[first - 1:last]:
            chars += len(line)
            if chars > self.max_chars and chosen:
                break  # the budget will cut far earlier; no need to count the rest
            chosen.append(line)
        content = "".join(chosen)
        end = first + len(chosen) - 1
        return ContextItem(id=f"{rel}:{first}-{end}", source=rel, content=content, tokens=count_tokens(content),
                           kind="file", retriever="workspace-file",
                           metadata={"path": rel, "start": first, "end": end})
