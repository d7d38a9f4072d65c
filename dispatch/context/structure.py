"""The ``structure`` item: a few lines that orient an agent in the workspace.

Languages by extension, top-level folders with their file counts, and totals.
It is built from the index's file table when there is one (no second walk),
else from a bounded walk of its own.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from dispatch.models import ContextItem
from dispatch.context.tokens import count_tokens
from dispatch.context.walk import iter_files

STRUCTURE_ID = "structure:workspace"
MAX_WALK = 200_000

LANGUAGES = {
    ".py": "Python", ".pyi": "Python", ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript",
    ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".go": "Go", ".rs": "Rust",
    ".java": "Java", ".kt": "Kotlin", ".scala": "Scala", ".c": "C", ".h": "C/C++ header",
    ".cc": "C++", ".cpp": "C++", ".hpp": "C++", ".cs": "C#", ".rb": "Ruby", ".php": "PHP",
    ".swift": "Swift", ".m": "Objective-C", ".sh": "Shell", ".bash": "Shell", ".sql": "SQL",
    ".md": "Markdown", ".rst": "reStructuredText", ".txt": "Text", ".json": "JSON", ".toml": "TOML",
    ".yaml": "YAML", ".yml": "YAML", ".ini": "INI", ".cfg": "INI", ".html": "HTML", ".css": "CSS",
    ".xml": "XML", ".proto": "Protobuf", ".lua": "Lua", ".r": "R", ".jl": "Julia", ".ex": "Elixir",
    ".erl": "Erlang", ".hs": "Haskell", ".ml": "OCaml", ".dart": "Dart", ".vue": "Vue",
}


def language_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name in ("Dockerfile", "Makefile", "CMakeLists.txt"):
        return name
    ext = os.path.splitext(name)[1].lower()
    return LANGUAGES.get(ext, ext or "(no extension)")


def scan_files(root: Path) -> list[tuple[str, int, str]]:
    """``(path, size, status)`` by walking; status is unknown without reading, so ``file``."""
    out = []
    for entry in iter_files(root):
        out.append((entry.rel, entry.size, "file"))
        if len(out) >= MAX_WALK:
            break
    return out


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def structure_item(root: Path, files: Iterable[tuple[str, int, str]], top: int = 12) -> ContextItem:
    """Summarise ``files`` (``(path, size, status)``) as one ``structure`` item."""
    langs: Counter[str] = Counter()
    folders: Counter[str] = Counter()
    top_files: list[str] = []
    total, total_bytes, binary = 0, 0, 0
    for path, size, status in files:
        total += 1
        total_bytes += size or 0
        if status == "binary":
            binary += 1
        else:
            langs[language_of(path)] += 1
        head, sep, _ = path.partition("/")
        if sep:
            folders[head] += 1
        else:
            top_files.append(path)
    lines = [f"Workspace {root.name or root}: {total} files, {_size(total_bytes)}"
             + (f" ({binary} binary)" if binary else "")]
    if langs:
        lines.append("Languages: " + ", ".join(f"{lang} {n}" for lang, n in langs.most_common(top)))
    if folders:
        shown = ", ".join(f"{name}/ ({n})" for name, n in folders.most_common(top))
        more = len(folders) - min(top, len(folders))
        lines.append("Top-level folders: " + shown + (f", +{more} more" if more else ""))
    if top_files:
        more = len(top_files) - min(top, len(top_files))
        lines.append("Top-level files: " + ", ".join(sorted(top_files)[:top]) + (f", +{more} more" if more else ""))
    content = "\n".join(lines) + "\n"
    return ContextItem(
        id=STRUCTURE_ID, source=str(root), content=content, score=1.0, tokens=count_tokens(content),
        kind="structure", retriever="structure",
        metadata={"files": total, "bytes": total_bytes, "languages": dict(langs.most_common(top)),
                  "top_folders": dict(folders.most_common(top))})
