"""Walking a workspace the way git sees it.

The index, the structure summary and phase 3's direct file reads must agree on
which files exist, so they all walk through :func:`iter_files`: ``.gitignore``
files at every level (deeper ones may re-include with ``!``), the repository's
``.git/info/exclude``, a few built-in excludes (VCS folders, caches, virtualenvs)
and no symlinks (git stores a link, not its target; following links can loop or
leave the workspace).  Only regular files on ordinary file systems are listed
(a kernel file system mounted inside is not entered: ``hostfs``), a name that
is not UTF-8 is listed escaped (``bad\\xff.py``) rather than crash the state's
JSON, and a walk longer than ``WALK_TIME_LIMIT_S`` stops with an error.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from dispatch.context.errors import ContextGatheringError
from dispatch.context.hostfs import display_name, is_special

if TYPE_CHECKING:  # imported where it is used: a run that reads no workspace never loads it
    import pathspec

DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", "__pycache__/", "node_modules/", ".venv/", ".tox/",
    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".dispatch/",
)
SNIFF_BYTES = 8192
WALK_TIME_LIMIT_S = 300.0  # a safety net: a workspace that takes longer to list is not one to index


@dataclass(slots=True)
class FileEntry:
    rel: str          # workspace-relative, "/"-separated
    path: str         # absolute
    size: int
    mtime_ns: int


def _spec(lines: Sequence[str]) -> Optional[pathspec.GitIgnoreSpec]:
    import pathspec

    lines = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _plain_dir(pattern: str) -> bool:
    name = pattern[:-1]
    return pattern.endswith("/") and bool(name) and not any(ch in name for ch in "*?[]!/\\ ")


def _read_ignore(path: str) -> Optional[pathspec.GitIgnoreSpec]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return _spec(fh.read().splitlines())
    except OSError:
        return None


class IgnoreRules:
    """The stack of ignore specs in force for one directory: (base prefix, spec)."""

    def __init__(self, root: Path, excludes: Sequence[str] = DEFAULT_EXCLUDES) -> None:
        self.root = root
        # plain folder names ("node_modules/") are checked by name: a set lookup
        # instead of running every pattern's regex against every path
        self.dir_names = frozenset(p[:-1] for p in excludes if _plain_dir(p))
        base = _spec([p for p in excludes if not _plain_dir(p)])
        stack: list[tuple[str, pathspec.GitIgnoreSpec]] = [("", base)] if base else []
        info = _read_ignore(str(root / ".git" / "info" / "exclude"))
        if info:
            stack.append(("", info))
        self.base_stack = stack

    @staticmethod
    def ignored(stack: Sequence[tuple[str, pathspec.GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
        """Git's rule: the last matching pattern, deepest file last, decides."""
        verdict: Optional[bool] = None
        target = rel + "/" if is_dir else rel
        for prefix, spec in stack:
            result = spec.check_file(target[len(prefix):])
            if result.include is not None:
                verdict = result.include
        return bool(verdict)

    def is_ignored(self, rel: str) -> bool:
        """Whether one workspace-relative file path is excluded (checks every ancestor)."""
        parts = rel.split("/")
        if any(part in self.dir_names for part in parts[:-1]):
            return True
        stack = list(self.base_stack)
        for depth in range(len(parts)):
            prefix = "/".join(parts[:depth])
            folder = self.root / prefix if prefix else self.root
            spec = _read_ignore(str(folder / ".gitignore"))
            if spec:
                stack.append((prefix + "/" if prefix else "", spec))
            here = "/".join(parts[: depth + 1])
            if self.ignored(stack, here, is_dir=depth < len(parts) - 1):
                return True
        return False


def iter_files(root: Path, excludes: Sequence[str] = DEFAULT_EXCLUDES,
               skip_dirs: Sequence[Path] = (), time_limit_s: float = WALK_TIME_LIMIT_S) -> Iterator[FileEntry]:
    """Every regular, non-ignored file under ``root`` with its size and mtime.

    ``skip_dirs`` are absolute folders never entered (e.g. an index cache that
    happens to live inside the workspace).
    """
    rules = IgnoreRules(root, excludes)
    skip = {os.path.abspath(p) for p in skip_dirs}
    todo: list[tuple[str, str, list]] = [(str(root), "", rules.base_stack)]
    deadline = time.monotonic() + time_limit_s
    while todo:
        if time.monotonic() > deadline:
            raise ContextGatheringError(f"listing the workspace {root} took longer than {time_limit_s:g}s")
        folder, prefix, stack = todo.pop()
        spec = _read_ignore(os.path.join(folder, ".gitignore"))
        if spec:
            stack = [*stack, (prefix, spec)]
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = prefix + display_name(entry.name)
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    if entry.name in rules.dir_names or entry.path in skip or is_special(entry.stat().st_dev):
                        continue
                    if not stack or not rules.ignored(stack, rel, True):
                        subdirs.append((entry.path, rel + "/", stack))
                    continue
                if not entry.is_file() or (stack and rules.ignored(stack, rel, False)):
                    continue
                st = entry.stat()
                if is_special(st.st_dev):
                    continue
            except OSError:
                continue
            yield FileEntry(rel, entry.path, st.st_size, st.st_mtime_ns)
        todo.extend(reversed(subdirs))


def looks_binary(data: bytes) -> bool:
    """Git's heuristic: a NUL byte in the first 8 KiB."""
    return b"\0" in data[:SNIFF_BYTES]

