#!/usr/bin/env python3
"""Workspace-audit agents for the bundled example: real work, no API key.

    audit.py inventory WORKSPACE      files and lines by language
    audit.py todos WORKSPACE          TODO / FIXME / XXX markers
    audit.py largest WORKSPACE        the ten largest files
    audit.py summarize CONTEXT_FILE   a report from the three above (dispatch's context file)

Each prints one JSON document on stdout, which dispatch's shell agent parses.
"""
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".dispatch", ".pytest_cache", ".hypothesis",
             "test-artifacts", "build", "dist"}
MARKER = re.compile(r"\b(TODO|FIXME|XXX)\b[:\s]*(.*)")


def files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(names):
            yield Path(folder) / name


def text_of(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096] or len(data) > 2_000_000:
        return None
    return data.decode("utf-8", errors="replace")


def inventory(root: Path) -> dict:
    by_ext, lines = Counter(), Counter()
    for path in files(root):
        ext = path.suffix or path.name
        by_ext[ext] += 1
        text = text_of(path)
        if text is not None:
            lines[ext] += text.count("\n")
    return {"files": sum(by_ext.values()), "by_extension": dict(by_ext.most_common(15)),
            "lines": dict(lines.most_common(15))}


def todos(root: Path) -> dict:
    found = []
    for path in files(root):
        text = text_of(path)
        if text is None or path.name == "audit.py":
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = MARKER.search(line)
            if match:
                found.append({"file": str(path.relative_to(root)), "line": number,
                              "kind": match.group(1), "text": match.group(2).strip()[:120]})
    return {"count": len(found), "markers": found[:50]}


def largest(root: Path) -> dict:
    sizes = sorted(((p.stat().st_size, str(p.relative_to(root))) for p in files(root) if p.is_file()), reverse=True)
    return {"largest": [{"file": name, "bytes": size} for size, name in sizes[:10]]}


def summarize(context_file: str) -> dict:
    deps = json.loads(Path(context_file).read_text())["dependency_outputs"]
    def parsed(task_id):
        out = deps.get(task_id) or {}
        return out.get("json") or out.get("stdout_json") or out
    inv, todo, big = parsed("inventory"), parsed("todos"), parsed("largest")
    top = ", ".join(f"{ext} ({n})" for ext, n in list(inv.get("by_extension", {}).items())[:5])
    lines = [f"{inv.get('files', 0)} files; most common: {top}.",
             f"{todo.get('count', 0)} TODO/FIXME/XXX markers.",
             "Largest: " + ", ".join(f"{f['file']} ({f['bytes']} B)" for f in big.get("largest", [])[:3]) + "."]
    return {"report": " ".join(lines), "inputs": sorted(deps)}


if __name__ == "__main__":
    command, target = sys.argv[1], sys.argv[2]
    handler = {"inventory": inventory, "todos": todos, "largest": largest}.get(command)
    result = handler(Path(target).resolve()) if handler else summarize(target)
    print(json.dumps(result))
