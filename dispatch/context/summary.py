"""A small summary of phase 0's output, for ``PhaseResult.output_data["context_summary"]``.

The full context goes to the state; this is what a person reads in the phase
result: how much was kept, what each query found, where time went, which
sources lead.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from dispatch.models import GlobalContext
from dispatch.context.tokens import TOKENIZER

INDEX_FACTS = ("files_seen", "files_indexed", "read", "added", "updated", "deleted",
               "skipped_binary", "skipped_large", "chunks_written", "rebuilt", "duration_ms")


def summarize_context(ctx: GlobalContext, top: int = 5) -> dict[str, Any]:
    kept_per_query: Counter[str] = Counter()
    for item in ctx.items:
        for query in {hit.get("query") for hit in item.metadata.get("hits", [])}:
            if query:
                kept_per_query[query] += 1
    ranked = sorted((i for i in ctx.items if i.kind != "structure"), key=lambda i: -i.score)
    summary: dict[str, Any] = {
        "items": len(ctx.items),
        "tokens": ctx.total_tokens,
        "budget_tokens": ctx.budget_tokens,
        "tokenizer": TOKENIZER,
        "queries": len(ctx.queries),
        "per_query_hits": dict(ctx.per_query_hits),
        "per_query_kept": {q: kept_per_query.get(q, 0) for q in ctx.queries},
        "retriever_timings_ms": dict(ctx.retriever_timings_ms),
        "kinds": dict(Counter(i.kind for i in ctx.items)),
        "top_sources": [{"id": i.id, "source": i.source, "score": i.score, "tokens": i.tokens}
                        for i in ranked[:top]],
        "errors": list(ctx.errors),
    }
    structure = next((i for i in ctx.items if i.kind == "structure"), None)
    if structure is not None and isinstance(structure.metadata.get("index"), dict):
        index = structure.metadata["index"]
        summary["index"] = {k: index[k] for k in INDEX_FACTS if k in index}
    return summary
