"""Phase 0: run the queries against every retriever and keep what fits the budget.

Retrievers run side by side (threads: they wait on disks and sockets), each on
its own: one failing is an entry in ``GlobalContext.errors``; all failing is a
:class:`ContextGatheringError`.  Answers are fused by rank, deduplicated,
headed by the workspace ``structure`` item, and cut to
``config.context.budget_tokens``.

Extra ``[context]`` options read here: ``max_queries`` (8), ``top_k`` (8, per
query and retriever) and ``structure`` (true).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.models import ContextItem, DispatchInput, GlobalContext
from dispatch.context.budget import fit_budget, fuse
from dispatch.context.errors import ContextGatheringError
from dispatch.context.hostfs import allowed_workspace
from dispatch.context.retrievers import RetrievalEnv, build_retriever
from dispatch.context.structure import scan_files, structure_item
from dispatch.context.terms import derive_queries

log = logging.getLogger("dispatch.context")

DEFAULT_RETRIEVERS = {"workspace": ComponentConfig(kind="workspace")}


@dataclasses.dataclass
class RetrieverRun:
    """One retriever's part of a gathering: its answers per query and its troubles."""

    name: str
    answers: dict[str, list[ContextItem]] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    duration_ms: float = 0.0
    ok: bool = False


def resolve_workspace(path: str) -> Path:
    """The workspace as an absolute directory this worker may read (``hostfs.allowed_workspace``), or a
    :class:`ContextGatheringError` saying why not."""
    return allowed_workspace(path)


def gather_context(request: DispatchInput, config: DispatchConfig, *,
                   cache_dir: Optional[Path] = None) -> GlobalContext:
    """Phase 0 (see module docstring)."""
    workspace = resolve_workspace(request.workspace_path)
    options = config.context
    queries = derive_queries(request, max_queries=options.max_queries)
    env = RetrievalEnv(workspace=workspace, cache_dir=cache_dir, top_k=options.top_k)
    components = config.retrievers or DEFAULT_RETRIEVERS

    jobs = [(name, component, dataclasses.replace(env, facts={})) for name, component in components.items()]
    if len(jobs) == 1:
        runs = [run_retriever(*jobs[0], queries)]
    else:
        with ThreadPoolExecutor(max_workers=min(len(jobs), 8), thread_name_prefix="retriever") as pool:
            runs = list(pool.map(lambda job: run_retriever(*job, queries), jobs))

    errors = [err for run in runs for err in run.errors]
    if not any(run.ok for run in runs):
        raise ContextGatheringError("every retriever failed: " + "; ".join(errors))

    answers = [run.answers[q] for run in runs for q in queries if q in run.answers]
    ranked = fuse(answers)
    if options.structure:
        ranked.insert(0, _structure(workspace, runs))
    budget = config.context.budget_tokens
    kept, used = fit_budget(ranked, budget)
    hits = {q: sum(len(run.answers.get(q, [])) for run in runs) for q in queries}
    log.debug("context: %d items, %d/%d tokens, %d errors", len(kept), used, budget, len(errors))
    return GlobalContext(items=kept, total_tokens=used, budget_tokens=budget, queries=queries,
                         per_query_hits=hits,
                         retriever_timings_ms={run.name: run.duration_ms for run in runs},
                         errors=errors)


def run_retriever(name: str, component: ComponentConfig, env: RetrievalEnv,
                  queries: list[str]) -> RetrieverRun:
    """Prepare one retriever and ask it every query; never raises."""
    run = RetrieverRun(name)
    t0 = time.perf_counter()
    retriever = None
    try:
        retriever = build_retriever(name, component, env)
        retriever.prepare()
        for query in queries:
            try:
                run.answers[query] = retriever.search(query, retriever.top_k)
            except Exception as exc:  # one query, one entry: the others may still answer
                run.errors.append(f"{name}: query {query!r}: {exc}")
        run.ok = not queries or bool(run.answers)
    except Exception as exc:
        run.errors.append(f"{name}: {exc}")
        log.warning("retriever %s failed: %s", name, exc)
    finally:
        if retriever is not None:
            try:
                retriever.close()
            except Exception:  # closing is best effort
                pass
        run.facts = env.facts
        run.duration_ms = round((time.perf_counter() - t0) * 1000, 1)
    return run


def _structure(workspace: Path, runs: list[RetrieverRun]) -> ContextItem:
    """The structure item, from an index's file table when a retriever left one."""
    facts = next((run.facts for run in runs if "files" in run.facts), None)
    item = structure_item(workspace, facts["files"] if facts else scan_files(workspace))
    if facts and "index" in facts:
        item.metadata["index"] = facts["index"]
    return item
