"""Declared write scopes: which tasks may change the same files with nothing ordering them.

A task's ``writes`` are gitignore-style globs (``src/calc.py``, ``docs/**``, ``*.md``).  Deciding
exactly whether two glob sets can match a common path is the intersection of two regular
languages; we decide conservatively instead, segment by segment, and say "overlap" whenever
unsure, because a false warning costs a look while a missed one costs an edit:

- a pattern without a slash matches at any depth (``calc.py`` is ``**/calc.py``), a leading slash
  anchors it, a trailing slash means a directory, and a matched directory covers everything
  under it (so ``docs`` overlaps ``docs/a.md``);
- one deliberate exception: a last segment with a wildcard and a dot (``*.py``, ``test_*.md``)
  is taken to name files, not directories; otherwise ``*.py`` and ``*.md`` would "overlap"
  through a directory called ``x.py`` holding ``y.md``, and every pair of extension globs would
  warn (``*`` or ``test_*`` may still be directories);
- ``**`` matches any number of segments; two segments overlap when equal, when one is literal
  and matches the other's glob, or, both being globs, when their literal prefixes and suffixes
  are compatible (``test_*`` and ``*.py`` overlap, ``*.py`` and ``*.md`` do not); a character
  class or an escape is taken as "may overlap";
- negated patterns (``!x``) are ignored, which only widens a scope.

Pure functions of the task list: phase 2 and the quorum's rules both call them.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache
from typing import NamedTuple, Sequence

from dispatch.models import TaskSpec

SPECIAL = "*?[\\"


class ScopeOverlap(NamedTuple):
    first: str  # earlier in input order
    second: str
    globs: list[str]  # the globs of either task that overlap the other's

    def describe(self) -> str:
        return (f"tasks '{self.first}' and '{self.second}' may both write {', '.join(self.globs)} "
                f"and no dependency orders them")


def segments(pattern: str) -> tuple[str, ...] | None:
    """The pattern as path segments with gitignore's implicit parts spelled out; None: no scope."""
    text = pattern.strip()
    if not text or text.startswith(("#", "!")):
        return None
    text = text.rstrip("/") if text != "/" else ""
    if not text:
        return None
    anchored = text.startswith("/") or "/" in text.lstrip("/")
    directory = pattern.strip().endswith("/")
    parts = [p for p in text.lstrip("/").split("/") if p]
    if not anchored:
        parts = ["**", *parts]
    names_files = any(c in parts[-1] for c in SPECIAL) and "." in parts[-1]
    if directory or not names_files:
        parts.append("**")  # a matched directory covers its contents
    collapsed: list[str] = []
    for part in parts:
        if not (part == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(part)
    return tuple(collapsed)


def segment_overlap(a: str, b: str) -> bool:
    wild_a, wild_b = any(c in a for c in SPECIAL), any(c in b for c in SPECIAL)
    if not wild_a and not wild_b:
        return a == b
    if not wild_a:
        return fnmatchcase(a, b) or "[" in b or "\\" in b
    if not wild_b:
        return fnmatchcase(b, a) or "[" in a or "\\" in a
    if any(c in a + b for c in "[\\"):
        return True
    prefix_a, prefix_b = a[: min(a.find(c) for c in "*?" if c in a)], b[: min(b.find(c) for c in "*?" if c in b)]
    suffix_a = a[max(a.rfind(c) for c in "*?") + 1:]
    suffix_b = b[max(b.rfind(c) for c in "*?") + 1:]
    return ((prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a))
            and (suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a)))


@lru_cache(maxsize=4096)
def patterns_overlap(a: str, b: str) -> bool:
    """True when some path may match both gitignore-style patterns (conservative: see the docstring)."""
    sa, sb = segments(a), segments(b)
    if sa is None or sb is None:
        return False

    @lru_cache(maxsize=None)
    def walk(i: int, j: int) -> bool:
        if i == len(sa) and j == len(sb):
            return True
        if i < len(sa) and sa[i] == "**" and (walk(i + 1, j) or (j < len(sb) and walk(i, j + 1))):
            return True
        if j < len(sb) and sb[j] == "**" and (walk(i, j + 1) or (i < len(sa) and walk(i + 1, j))):
            return True
        if i == len(sa) or j == len(sb) or sa[i] == "**" or sb[j] == "**":
            return False
        return segment_overlap(sa[i], sb[j]) and walk(i + 1, j + 1)

    return walk(0, 0)


def depends_on(tasks: Sequence[TaskSpec]) -> dict[str, set[str]]:
    """Task id -> every task it depends on, directly or not."""
    direct = {t.task_id: list(t.dependencies) for t in tasks}
    closure: dict[str, set[str]] = {}
    for root in direct:
        seen: set[str] = set()
        stack = list(direct[root])
        while stack:
            dep = stack.pop()
            if dep in seen or dep not in direct:
                continue
            seen.add(dep)
            stack.extend(direct[dep])
        closure[root] = seen
    return closure


def overlap_between(a: TaskSpec, b: TaskSpec) -> list[str]:
    hits_a = [p for p in a.writes if any(patterns_overlap(p, q) for q in b.writes)]
    hits_b = [q for q in b.writes if any(patterns_overlap(p, q) for p in a.writes)]
    return list(dict.fromkeys(hits_a + hits_b))


def overlapping_scopes(tasks: Sequence[TaskSpec]) -> list[ScopeOverlap]:
    """Pairs of tasks (in input order) whose ``writes`` overlap with no dependency path between them."""
    scoped = [t for t in tasks if t.writes]
    if len(scoped) < 2:  # no pair to compare: no closure to compute (a 100k-task breakdown without writes)
        return []
    closure = depends_on(tasks)
    found = []
    for i, first in enumerate(scoped):
        for second in scoped[i + 1:]:
            if first.task_id in closure[second.task_id] or second.task_id in closure[first.task_id]:
                continue
            globs = overlap_between(first, second)
            if globs:
                found.append(ScopeOverlap(first.task_id, second.task_id, globs))
    return found


def serialize_overlaps(tasks: Sequence[TaskSpec], pairs: Sequence[ScopeOverlap]) -> list[TaskSpec]:
    """The tasks with the later task of each pair made to depend on the earlier one.

    A pair already ordered by an edge added for an earlier pair is left alone; since an edge is
    only added between two tasks with no path either way, no cycle can appear.
    """
    updated = {t.task_id: t.model_copy(deep=True) for t in tasks}
    for first, second, _ in pairs:
        closure = depends_on(list(updated.values()))
        if first in closure[second] or second in closure[first]:
            continue
        updated[second].dependencies = [*updated[second].dependencies, first]
    return [updated[t.task_id] for t in tasks]
