"""Ranking, deduplicating and fitting context items to a token budget.

Scores from different retrievers (BM25 from SQLite, whatever a service returns)
are not comparable, so each answer is normalised on its own: an item earns its
score divided by the answer's best score (or, when an answer's scores are not
all positive, ``(K + 1) / (K + rank)``, reciprocal-rank style), so every
answer's top hit earns 1.0.  An item found by several answers keeps its best
earning plus ``MULTI_HIT_WEIGHT`` of the others: being relevant to more of the
request lifts it, but two middling hits do not outrank a query's best match.
The same id from two answers is one item; overlapping line ranges of one file
are merged into one.

The budget is then filled greedily in score order: an item that fits is taken,
the first that does not is trimmed (whole lines) when at least
``min_trim_tokens`` are left, and smaller items further down may still fill
the rest.  The sum of the kept items' tokens never exceeds the budget.
"""
from __future__ import annotations

from typing import Iterable, Optional

from dispatch.models import ContextItem
from dispatch.context.tokens import count_tokens, trim_to_tokens

RRF_K = 10
MULTI_HIT_WEIGHT = 0.3
MIN_TRIM_TOKENS = 48


def fuse(answers: Iterable[list[ContextItem]]) -> list[ContextItem]:
    """Distinct items from ranked answers, best first, with fused scores.

    Each item keeps ``metadata["hits"]``: the (query, retriever, rank, raw
    score, gain) of every answer that returned it.
    """
    by_id: dict[str, ContextItem] = {}
    for answer in answers:
        top = max((i.score for i in answer), default=0.0)
        by_score = top > 0 and all(i.score > 0 for i in answer)
        for rank, item in enumerate(answer, start=1):
            gain = item.score / top if by_score else (RRF_K + 1) / (RRF_K + rank)
            hit = {"query": item.query, "retriever": item.retriever, "rank": rank,
                   "score": item.score, "gain": round(gain, 4)}
            seen = by_id.get(item.id)
            if seen is None:
                by_id[item.id] = item.model_copy(update={"metadata": {**item.metadata, "hits": [hit]}})
            else:
                seen.metadata["hits"].append(hit)
    items = merge_overlaps(list(by_id.values()))
    for item in items:
        item.score = _fused(item.metadata["hits"])
    items.sort(key=lambda i: (-i.score, i.id))
    return items


def _fused(hits: list[dict]) -> float:
    gains = sorted((h["gain"] for h in hits), reverse=True)
    return round(gains[0] + MULTI_HIT_WEIGHT * sum(gains[1:]), 4)


def _span(item: ContextItem) -> Optional[tuple[str, int, int]]:
    meta = item.metadata
    path, start, end = meta.get("path"), meta.get("start"), meta.get("end")
    if isinstance(path, str) and isinstance(start, int) and isinstance(end, int):
        return path, start, end
    return None


def merge_overlaps(items: list[ContextItem]) -> list[ContextItem]:
    """Merge items whose line ranges of the same file overlap (adjacent ones stay apart)."""
    spans: dict[str, list[tuple[int, int, ContextItem]]] = {}
    out: list[ContextItem] = []
    for item in items:
        span = _span(item)
        if span is None:
            out.append(item)
        else:
            spans.setdefault(span[0], []).append((span[1], span[2], item))
    for path, group in spans.items():
        group.sort(key=lambda g: (g[0], -g[1]))
        current = group[0][2]
        for _, _, nxt in group[1:]:
            merged = _merge(path, current, nxt)
            if merged is None:
                out.append(current)
                current = nxt
            else:
                current = merged
        out.append(current)
    return out


def _merge(path: str, a: ContextItem, b: ContextItem) -> Optional[ContextItem]:
    """``a`` starts first; their union if they overlap, else ``None``."""
    _, a_start, a_end = _span(a)  # type: ignore[misc]
    _, b_start, b_end = _span(b)  # type: ignore[misc]
    if b_start > a_end:
        return None
    hits = a.metadata.get("hits", []) + b.metadata.get("hits", [])
    score = max(a.score, b.score)
    if b_end <= a_end:  # b inside a
        return a.model_copy(update={"score": score, "metadata": {**a.metadata, "hits": hits}})
    a_lines = a.content.splitlines(keepends=True)
    b_lines = b.content.splitlines(keepends=True)
    if len(a_lines) != a_end - a_start + 1 or len(b_lines) != b_end - b_start + 1:
        best = a if a.score >= b.score else b  # ranges and content disagree: keep one whole
        return best.model_copy(update={"score": score, "metadata": {**best.metadata, "hits": hits}})
    content = "".join(a_lines + b_lines[a_end - b_start + 1:])
    return a.model_copy(update={
        "id": f"{path}:{a_start}-{b_end}", "content": content, "tokens": count_tokens(content),
        "score": score, "metadata": {**a.metadata, "end": b_end, "hits": hits,
                                     "merged": [a.id, b.id]}})


def trim_item(item: ContextItem, max_tokens: int) -> Optional[ContextItem]:
    """``item`` cut to ``max_tokens`` (whole lines; its range and id follow), or ``None``."""
    text, tokens, lines = trim_to_tokens(item.content, max_tokens)
    if tokens == 0:
        return None
    meta = {**item.metadata, "trimmed_from_tokens": item.tokens}
    update: dict = {"content": text, "tokens": tokens, "metadata": meta}
    span = _span(item)
    if span is not None:
        path, start, _ = span
        end = start + max(lines, 1) - 1
        update["id"] = f"{path}:{start}-{end}"
        meta.update(end=end, trimmed_from=item.id)
    return item.model_copy(update=update)


def fit_budget(items: Iterable[ContextItem], budget: int,
               min_trim_tokens: int = MIN_TRIM_TOKENS) -> tuple[list[ContextItem], int]:
    """Greedy fill in the given order; returns ``(kept, total_tokens)``, total <= budget."""
    picked, used = select_within_budget(items, budget, min_trim_tokens)
    return [item for _, item in picked], used


def select_within_budget(items: Iterable[ContextItem], budget: int, min_trim_tokens: int = MIN_TRIM_TOKENS
                         ) -> tuple[list[tuple[int, ContextItem]], int]:
    """As :func:`fit_budget`, but each kept item comes with its position in ``items``."""
    kept: list[tuple[int, ContextItem]] = []
    used = 0
    for position, item in enumerate(items):
        room = budget - used
        if room <= 0:
            break
        if item.tokens <= 0 and item.content:  # never trust a missing count
            item = item.model_copy(update={"tokens": count_tokens(item.content)})
        if item.tokens <= room:
            kept.append((position, item))
            used += item.tokens
        elif room >= min(min_trim_tokens, budget):
            cut = trim_item(item, room)
            if cut is not None:
                kept.append((position, cut))
                used += cut.tokens
    return kept, used
