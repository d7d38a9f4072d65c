"""Phase 3: give each task the part of the global context it asked for, within its budget.

A task's ``context_requirements`` are matched against the gathered items:

* ``rag:QUERY`` (or bare text): items gathered for that query, and items whose
  text matches its terms;
* ``file:PATH_OR_GLOB`` (optionally ``PATH:START-END``): items from matching
  files; when nothing gathered matches, the file is read from the workspace
  (see :mod:`dispatch.context.files`);
* ``pattern:NAME``: items whose text or path match NAME's words
  (``onex-architecture`` -> onex, architecture);
* ``structure:``: the workspace structure item.

Candidates are then ranked: explicitly named files and the structure come
first, then by how strongly the requirement matched and how relevant the item
is to the task's description and ``input_data`` (BM25 over the candidates).  A
task without requirements gets the items relevant to its description.  The
per-task budget is filled as in phase 0 and never exceeded.

Work that does not depend on the task (scoring index, requirement matches,
file reads) is done once per call and shared, so 1000 tasks take well under a
second.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from dispatch.config import DispatchConfig
from dispatch.models import ContextChoice, ContextItem, GlobalContext, TaskContext, TaskSpec
from dispatch.context.bm25 import MiniBM25
from dispatch.context.budget import select_within_budget
from dispatch.context.files import WorkspaceFiles, parse_file_requirement
from dispatch.context.terms import scoring_terms
from dispatch.context.tokens import count_tokens

KINDS = ("rag", "file", "pattern", "structure")
EXPLICIT_BONUS = {"file": 1.0, "structure": 1.0, "rag": 0.0, "pattern": 0.0}
QUERY_MATCH_FLOOR = 0.3    # share of the best BM25 score a term match needs
PATTERN_MATCH_FLOOR = 0.2
DESCRIPTION_FLOOR = 0.1


@dataclass(frozen=True, slots=True)
class Requirement:
    raw: str
    kind: str
    value: str


@dataclass(slots=True)
class Candidate:
    item: ContextItem
    index: Optional[int]      # position in the pool, None for a file read directly
    requirement: Optional[Requirement]
    strength: float           # 0..1: how well the requirement matched
    reason: str
    also: tuple[str, ...] = ()  # other requirements the same item matched


def parse_requirement(raw: str) -> Requirement:
    head, sep, rest = raw.partition(":")
    kind = head.strip().lower()
    if sep and kind in KINDS:
        return Requirement(raw, kind, rest.strip())
    return Requirement(raw, "rag", raw.strip())


def _norm_query(text: str) -> str:
    return " ".join(text.lower().split())


class ItemPool:
    """The gathered items, indexed once for every task of the call."""

    def __init__(self, ctx: Optional[GlobalContext], root: Optional[Path] = None) -> None:
        self.root = root
        items = list(ctx.items) if ctx else []
        # counts from a saved state are not trusted: recount once here
        self.items = [i if i.tokens == count_tokens(i.content) else
                      i.model_copy(update={"tokens": count_tokens(i.content)}) for i in items]
        self.bm25 = MiniBM25([scoring_terms(f"{i.source} {i.content}") for i in self.items])
        self.by_query: dict[str, list[int]] = {}
        for n, item in enumerate(self.items):
            queries = {item.query} | {h.get("query") for h in item.metadata.get("hits", [])}
            for q in filter(None, queries):
                self.by_query.setdefault(_norm_query(q), []).append(n)
        self.paths = [str(i.metadata.get("path") or i.source) for i in self.items]
        top = max((i.score for i in self.items if i.kind != "structure"), default=0.0)
        # phase 0's rank, made with the whole corpus's statistics, is a useful prior
        self.prior = [max(i.score, 0.0) / top if top > 0 and i.kind != "structure" else 0.0 for i in self.items]
        self._memo: dict[str, list[Candidate]] = {}

    def match(self, req: Requirement) -> list[Candidate]:
        """Pool items matching ``req`` (memoised: tasks share requirements)."""
        found = self._memo.get(req.raw)
        if found is None:
            found = self._memo[req.raw] = getattr(self, f"_match_{req.kind}")(req)
        return found

    def prior_of(self, cand: Candidate) -> float:
        return self.prior[cand.index] if cand.index is not None else 0.0

    def _match_rag(self, req: Requirement) -> list[Candidate]:
        out = {n: Candidate(self.items[n], n, req, 1.0, f"gathered for query {req.value!r}")
               for n in self.by_query.get(_norm_query(req.value), [])}
        for n, strength, terms in self._term_matches(req.value, QUERY_MATCH_FLOOR):
            if n not in out:
                out[n] = Candidate(self.items[n], n, req, 0.8 * strength, f"matches query terms {terms}")
        return list(out.values())

    def _match_pattern(self, req: Requirement) -> list[Candidate]:
        text = re.sub(r"[-_./]+", " ", req.value)
        return [Candidate(self.items[n], n, req, strength, f"pattern terms {terms}")
                for n, strength, terms in self._term_matches(text, PATTERN_MATCH_FLOOR)]

    def _match_structure(self, req: Requirement) -> list[Candidate]:
        return [Candidate(i, n, req, 1.0, "workspace structure")
                for n, i in enumerate(self.items) if i.kind == "structure"]

    def _match_file(self, req: Requirement) -> list[Candidate]:
        wanted = parse_file_requirement(req.value, self.root)
        if wanted is None:
            return []
        import pathspec

        spec = pathspec.GitIgnoreSpec.from_lines([wanted.pattern])
        out = []
        for n, item in enumerate(self.items):
            if item.kind == "structure" or not spec.match_file(self.paths[n]):
                continue
            if wanted.lines and not _overlaps(item, wanted.lines):
                continue
            out.append(Candidate(item, n, req, 1.0, f"path matches {wanted.pattern!r}"))
        return out

    def _term_matches(self, text: str, floor: float) -> list[tuple[int, float, str]]:
        """``(item, strength, matched terms)``: strength mixes BM25 (relative to the best
        match) with the share of the requirement's terms the item contains."""
        terms = list(dict.fromkeys(scoring_terms(text)))
        scores = self.bm25.scores(terms)
        if not scores:
            return []
        best = max(scores.values())
        out = []
        for n, score in scores.items():
            if score >= floor * best and self.items[n].kind != "structure":
                matched = self.bm25.matched_terms(terms, n)
                strength = 0.5 * score / best + 0.5 * len(matched) / len(terms)
                out.append((n, strength, ", ".join(matched)))
        out.sort(key=lambda m: -m[1])
        return out


def _overlaps(item: ContextItem, lines: tuple[int, int]) -> bool:
    start, end = item.metadata.get("start"), item.metadata.get("end")
    if not isinstance(start, int) or not isinstance(end, int):
        return True
    return start <= lines[1] and lines[0] <= end


def _task_text(task: TaskSpec, limit: int = 4000) -> str:
    parts = [task.description]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                parts.append(str(key))
                walk(sub)
        elif isinstance(value, (list, tuple)):
            for sub in value:
                walk(sub)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            parts.append(str(value))

    walk(task.input_data)
    return " ".join(parts)[:limit]


def filter_contexts(tasks: list[TaskSpec], global_context: Optional[GlobalContext], config: DispatchConfig,
                    *, workspace_path: str = ".", cache_dir: Optional[Path] = None) -> dict[str, TaskContext]:
    """Phase 3 (see module docstring).  ``cache_dir`` is accepted for symmetry; unused."""
    budget = config.context.per_task_budget_tokens
    files = WorkspaceFiles(workspace_path, max_chars=max(20_000, budget * 12))
    pool = ItemPool(global_context, files.root)
    return {task.task_id: _filter_task(task, pool, files, budget) for task in tasks}


def _filter_task(task: TaskSpec, pool: ItemPool, files: WorkspaceFiles, budget: int) -> TaskContext:
    requirements = [parse_requirement(r) for r in task.context_requirements if r.strip()]
    chosen: dict[str, Candidate] = {}
    unmatched: list[str] = []
    for req in requirements:
        found = pool.match(req)
        if not found and req.kind == "file":
            found = [Candidate(item, None, req, 1.0, why) for item, why in files.read(req.value)]
        if not found:
            unmatched.append(req.raw)
        for cand in found:
            best = chosen.get(cand.item.id)
            if best is None:
                chosen[cand.item.id] = cand
            elif _rank(cand, 0.0) > _rank(best, 0.0):
                chosen[cand.item.id] = replace(cand, also=(*best.also, best.requirement.raw))
            elif req.raw not in best.also and best.requirement is not req:
                chosen[cand.item.id] = replace(best, also=(*best.also, req.raw))

    terms = scoring_terms(_task_text(task))
    if not requirements:
        scores = pool.bm25.scores(terms)
        top = max(scores.values(), default=0.0)
        for n, score in scores.items():
            if score >= DESCRIPTION_FLOOR * top and pool.items[n].kind != "structure":
                chosen[pool.items[n].id] = Candidate(pool.items[n], n, None, 0.0, "relevant to the task description")
    in_pool = {c.index for c in chosen.values() if c.index is not None}
    scores = pool.bm25.scores(terms, only=in_pool) if in_pool else {}
    top = max(scores.values(), default=0.0) or 1.0
    ranked = sorted(chosen.values(), key=lambda c: -_rank(c, scores.get(c.index, 0.0) / top, pool.prior_of(c)))

    picked, used = select_within_budget([c.item for c in ranked], budget)
    report = _report(ranked, dict(picked), scores, top, pool)
    return TaskContext(task_id=task.task_id, items=[item for _, item in picked], total_tokens=used,
                       budget_tokens=budget, report=report, unmatched_requirements=unmatched)


def _rank(cand: Candidate, relevance: float, prior: float = 0.0) -> float:
    """Explicit file/structure requests first; then requirement match, task relevance, phase 0 rank."""
    bonus = EXPLICIT_BONUS[cand.requirement.kind] if cand.requirement else 0.0
    return bonus + 0.5 * cand.strength + 0.35 * relevance + 0.15 * prior


def _report(ranked: list[Candidate], kept: dict[int, ContextItem], scores: dict[int, float],
            top: float, pool: ItemPool) -> list[ContextChoice]:
    """A choice per kept item, and one per requirement whose every match was squeezed out."""
    report: list[ContextChoice] = []
    served: set[Optional[str]] = set()
    for position, cand in enumerate(ranked):
        relevance = scores.get(cand.index, 0.0) / top if cand.index is not None else 0.0
        item = kept.get(position)
        requirement = cand.requirement.raw if cand.requirement else None
        if item is not None:
            served.add(requirement)
            served.update(cand.also)
            notes = f"; also matches {', '.join(cand.also)}" if cand.also else ""
            if item.content != cand.item.content:
                notes += "; trimmed to fit the budget"
            score = round(_rank(cand, relevance, pool.prior_of(cand)), 4)
            report.append(ContextChoice(item_id=item.id, source=item.source, requirement=requirement, score=score,
                                        tokens=item.tokens, reason=f"{cand.reason}; relevance {relevance:.2f}{notes}"))
    for cand in ranked:
        requirement = cand.requirement.raw if cand.requirement else None
        if requirement is not None and requirement not in served:
            served.add(requirement)
            report.append(ContextChoice(item_id=cand.item.id, source=cand.item.source, requirement=requirement,
                                        score=0.0, tokens=0,
                                        reason=f"not included: over the per-task budget ({cand.item.tokens} tokens)"))
    return report
