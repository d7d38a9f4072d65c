"""The ``rules`` validator: deterministic checks that need no model and no network.

It catches what can be known for certain (a graph that cannot run, agents that do
not exist, empty descriptions) and the crude but common failure the quorum exists
for: a breakdown about something other than the request (the guide's "build a
postgres adapter" broken down as UserAuthentication work).  Alignment is judged on
key terms (see ``text``): the share of the request's terms the breakdown covers,
and the share of tasks that mention at least one of them.

Decision: structural faults or no tasks -> FAIL; an alignment score below
``fail_score`` (default 25, i.e. next to no overlap at all) -> FAIL; a major
deficiency or a score below ``pass_score`` (default 60) -> RETRY; else PASS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from dispatch.errors import ConfigError
from dispatch.models import DispatchInput, TaskSpec
from dispatch.quorum.base import VALIDATORS, Validator, Verdict
from dispatch.common.scopes import overlapping_scopes
from dispatch.quorum.graph import graph_faults
from dispatch.quorum.text import matches_any, term_roots

MAJOR_PENALTY = 10.0  # per deficiency that on its own warrants a RETRY
MINOR_PENALTY = 5.0  # per cosmetic deficiency
COVERAGE_WEIGHT = 0.6  # the rest goes to the share of relevant tasks


@dataclass
class RulesReport:
    """Everything the checks found, before it is turned into a verdict."""

    faults: list[str] = field(default_factory=list)  # the breakdown cannot run as is
    majors: list[str] = field(default_factory=list)
    minors: list[str] = field(default_factory=list)
    prompt_terms: int = 0
    coverage: float = 1.0  # share of the request's key terms found in the breakdown
    relevance: float = 1.0  # share of tasks mentioning at least one of them

    @property
    def alignment_score(self) -> float:
        score = 100.0 * (COVERAGE_WEIGHT * self.coverage + (1 - COVERAGE_WEIGHT) * self.relevance)
        score -= MAJOR_PENALTY * len(self.majors) + MINOR_PENALTY * len(self.minors)
        return round(max(0.0, min(100.0, score)), 1)

    @property
    def confidence(self) -> float:
        if self.faults:
            return 0.95
        # More request terms, more evidence for (or against) alignment.
        return round(0.5 + 0.1 * min(self.prompt_terms, 4), 2)

    def verdict(self, pass_score: float, fail_score: float) -> Verdict:
        score = self.alignment_score
        if self.faults or score < fail_score:
            decision = "FAIL"
        elif self.majors or score < pass_score:
            decision = "RETRY"
        else:
            decision = "PASS"
        return Verdict(recommendation=decision, alignment_score=score, confidence=self.confidence,
                       deficiencies=self.faults + self.majors + self.minors)


def check_breakdown(prompt: str, tasks: Sequence[TaskSpec], known_agents: Optional[set[str]] = None,
                    min_description_words: int = 3) -> RulesReport:
    """Run every check; ``known_agents`` None skips the agent check."""
    report = RulesReport()
    if not tasks:
        report.faults.append("Breakdown has no tasks")
        return report
    report.faults.extend(graph_faults(tasks))
    # declared write scopes that overlap with no dependency ordering them: they may conflict in phase 4
    report.majors.extend(overlap.describe() for overlap in overlapping_scopes(tasks))
    for task in tasks:
        description = task.description.strip()
        if not description:
            report.majors.append(f"Task '{task.task_id}' has an empty description")
        elif len(description.split()) < min_description_words:
            report.minors.append(f"Task '{task.task_id}' description is very short: '{description}'")
        if known_agents is not None and task.agent not in known_agents:
            report.majors.append(f"Task '{task.task_id}' uses unknown agent '{task.agent}' "
                                 f"(known: {', '.join(sorted(known_agents))})")
    _check_alignment(prompt, tasks, report)
    return report


def _check_alignment(prompt: str, tasks: Sequence[TaskSpec], report: RulesReport) -> None:
    wanted = term_roots(prompt)
    report.prompt_terms = len(wanted)
    if not wanted:
        return  # no request to compare with: structure only
    per_task_words = [term_roots(_task_text(task)) for task in tasks]
    per_task = [set(terms) for terms in per_task_words]
    everything = set().union(*per_task)
    uncovered = [word for root, word in wanted.items() if not matches_any(root, everything)]
    unrelated = [task for task, terms in zip(tasks, per_task) if not any(matches_any(r, terms) for r in wanted)]
    report.coverage = 1 - len(uncovered) / len(wanted)
    report.relevance = 1 - len(unrelated) / len(tasks)
    if len(unrelated) == len(tasks):
        about = dict.fromkeys(w for terms in per_task_words for w in terms.values())
        report.majors.append(f"Breakdown does not match the request: no task mentions {_quote(wanted.values())} "
                             f"(the tasks are about {_quote(about, limit=5)})")
        return
    if uncovered:
        report.minors.append(f"Request terms not covered by any task: {_quote(uncovered)}")
    for task in unrelated:
        report.minors.append(f"Task '{task.task_id}' shares no key term with the request")


def _task_text(task: TaskSpec) -> str:
    """What a task says about its subject: id, description, string inputs, requirements."""
    parts = [task.task_id, task.description, *task.context_requirements]
    parts.extend(_strings(task.input_data, depth=2))
    return " ".join(parts)


def _strings(value: Any, depth: int) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth - 1)
    elif depth > 0 and isinstance(value, list):
        for item in value:
            yield from _strings(item, depth - 1)


def _quote(words: Iterable[str], limit: int = 8) -> str:
    words = list(words)
    shown = ", ".join(f"'{w}'" for w in words[:limit])
    return shown + (f" (and {len(words) - limit} more)" if len(words) > limit else "")


@VALIDATORS.register("rules")
class RulesValidator(Validator):
    """Options: ``pass_score`` (60), ``fail_score`` (25), ``min_description_words`` (3),
    ``agents`` (extra agent names to accept), ``check_agents`` (true)."""

    deterministic = True
    cacheable = False  # cheaper to recompute than to fetch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pass_score = self._number("pass_score", 60.0)
        self.fail_score = self._number("fail_score", 25.0)
        if self.fail_score > self.pass_score:
            raise ConfigError(f"validators.{self.name}: fail_score must not exceed pass_score")
        self.min_words = int(self._number("min_description_words", 3))
        extra = self.options.get("agents", [])
        if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
            raise ConfigError(f"validators.{self.name}.agents: must be a list of agent names")
        self.extra_agents = set(extra)
        self.check_agents = bool(self.options.get("check_agents", True))

    def _number(self, key: str, default: float) -> float:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ConfigError(f"validators.{self.name}.{key}: must be a number from 0 to 100")
        return float(value)

    def agent_names(self) -> Optional[set[str]]:
        # the names come from whoever runs the quorum (dispatch.agents owns them); none given: no check
        if not self.check_agents or self.known_agents is None:
            return None
        return set(self.known_agents) | self.extra_agents

    def validate(self, request: DispatchInput) -> Verdict:
        report = check_breakdown(request.user_prompt, request.tasks, self.agent_names(), self.min_words)
        return report.verdict(self.pass_score, self.fail_score)
