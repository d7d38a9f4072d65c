"""Cutting a file into line ranges that make good context items.

A chunk aims at ``target`` lines and is cut at the blank line nearest that
mark within ``[min_lines, max_lines]`` (blank lines separate functions and
paragraphs, so chunks tend to hold whole ones); with no blank line in reach it
is cut at ``target``.  A chunk also ends early once it passes ``max_chars``, so
minified or data files do not make giant items.  Chunks do not overlap: the
same line never costs budget twice, and deduplication stays a matter of ids.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    target: int = 50
    min_lines: int = 30
    max_lines: int = 70
    max_chars: int = 6000

    def signature(self) -> str:
        return f"{self.target}/{self.min_lines}/{self.max_lines}/{self.max_chars}"


def chunk_lines(lines: list[str], opts: ChunkOptions = ChunkOptions()) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` 0-based half-open line ranges covering ``lines``."""
    n = len(lines)
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = _cut(lines, start, n, opts)
        out.append((start, end))
        start = end
    return out


def _cut(lines: list[str], start: int, n: int, opts: ChunkOptions) -> int:
    limit = min(n, start + opts.max_lines)
    chars = 0
    for i in range(start, limit):  # the char cap wins over everything else
        chars += len(lines[i])
        if chars > opts.max_chars:
            return max(i, start + 1)
    if n - start <= opts.max_lines:
        return n
    best, best_dist = -1, n
    for i in range(start + opts.min_lines, limit):
        if not lines[i].strip():
            dist = abs(i + 1 - (start + opts.target))
            if dist < best_dist:
                best, best_dist = i + 1, dist
    return best if best > 0 else start + opts.target
