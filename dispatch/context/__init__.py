"""Context for the agents: phase 0 gathers it, phase 3 hands each task its share.

Pure logic (no Celery).  The phase tasks call three functions:

* :func:`gather_context` (phase 0): queries -> retrievers -> fused, deduplicated,
  budgeted :class:`~dispatch.models.GlobalContext`;
* :func:`filter_contexts` (phase 3): per task, the items its requirements and
  description call for, within the per-task budget;
* :func:`summarize_context`: the small dict for the phase result.

Modules, one idea each: ``tokens`` (counting), ``terms`` (queries), ``walk``
(which files exist), ``chunking``, ``index`` (SQLite FTS5), ``retrievers/``
(the registry and its kinds), ``budget`` (fusion, dedup, fitting),
``structure``, ``gather``, ``bm25``, ``files`` (direct reads), ``filtering``,
``summary``.
"""
from dispatch.context.errors import ContextGatheringError
from dispatch.context.filtering import filter_contexts
from dispatch.context.gather import gather_context
from dispatch.context.retrievers import RETRIEVERS, Retriever
from dispatch.context.summary import summarize_context

__all__ = ["ContextGatheringError", "gather_context", "filter_contexts", "summarize_context",
           "RETRIEVERS", "Retriever"]
