"""Pydantic models: the single source of every JSON shape dispatch reads or writes.

Field names follow PHASE_CONTROL_GUIDE.md exactly; anything the guide does not
print is an addition, never a rename.  Input models keep unknown keys
(``extra="allow"``) because the design promises they reach agents untouched.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from dispatch.config import BudgetOptions, ComponentConfig, DispatchConfig, Price, WorkspaceOptions

SCHEMA_VERSION = 1

# Where a run is.  ``paused``: stopped at an interactive checkpoint or at a budget cap (``pause_reason``),
# to be continued.  Every change of it goes through ``dispatch.pipeline.status``.
RunStatus = Literal["pending", "running", "paused", "succeeded", "failed", "cancelled"]


# The config of every model (and ``TypeAdapter``) dispatch parses a run's worth of JSON with: pydantic-core's
# string cache off.  Why: that cache is process-wide and keeps the last ~16k short strings of every JSON
# parse (task ids, descriptions, agent names) alive after the parsed objects are gone.  A worker's phase
# task parses a 10k-task state into ~50 MB of objects; the ~15k cached strings left scattered over those
# objects' pymalloc arenas keep nearly every arena in use, so freed memory never goes back to the system
# (measured: a worker stayed +53 MB after one 10k-task run, +5 MB without the cache).  Parse time is the
# same within noise (10k tasks: 40-43 ms either way).
UNCACHED_JSON = ConfigDict(cache_strings=False)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """The guide's timestamp form: ``2025-10-07T16:30:01.523Z``."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------- input
class TaskSpec(BaseModel):
    """One unit of work from the breakdown."""

    model_config = ConfigDict(extra="allow", cache_strings=False)  # see UNCACHED_JSON

    task_id: str = Field(min_length=1)
    agent: str = Field(min_length=1)
    description: str
    input_data: dict[str, Any] = Field(default_factory=dict)
    context_requirements: list[str] = Field(default_factory=list)
    dependencies: list[str] = Field(default_factory=list)
    # A hint for the scheduler: tasks on the longest remaining path start first.
    estimated_duration_ms: Optional[float] = Field(default=None, ge=0, strict=True, allow_inf_nan=False)
    # gitignore-style globs (relative to workspace_path) of the files the task means to change
    writes: list[str] = Field(default_factory=list)


class RunConfig(BaseModel):
    """The input's ``config`` block: per-run knobs."""

    model_config = ConfigDict(extra="allow")

    # strict and finite: ``"5"``, ``true`` and ``1e999`` are refused with their path, not coerced
    max_workers: int = Field(default=5, ge=1, le=100_000, strict=True)
    timeout_seconds: float = Field(default=300, gt=0, le=30 * 24 * 3600, strict=True, allow_inf_nan=False)
    trace_dir: Optional[str] = None
    # the run's caps; each key given here wins over the config file's [budget]
    budget: Optional[BudgetOptions] = None


class DispatchInput(BaseModel):
    """What arrives on stdin or through ``--input-file``."""

    model_config = ConfigDict(extra="allow")

    user_prompt: str = ""
    workspace_path: str = "."
    rag_queries: list[str] = Field(default_factory=list)
    tasks: list[TaskSpec]
    config: RunConfig = Field(default_factory=RunConfig)


# -------------------------------------------------------------------- phases
class ExecutionPhase(str, enum.Enum):
    CONTEXT_GATHERING = "CONTEXT_GATHERING"
    QUORUM_VALIDATION = "QUORUM_VALIDATION"
    TASK_PLANNING = "TASK_PLANNING"
    CONTEXT_FILTERING = "CONTEXT_FILTERING"
    PARALLEL_EXECUTION = "PARALLEL_EXECUTION"

    @property
    def number(self) -> int:
        return list(ExecutionPhase).index(self)

    @property
    def title(self) -> str:
        return self.value.replace("_", " ").title()

    @classmethod
    def of(cls, number: int) -> "ExecutionPhase":
        return list(cls)[number]


ALL_PHASES = tuple(range(len(ExecutionPhase)))


class PhaseConfig(BaseModel):
    """The phase-selection flags, as the CLI received them."""

    only_phase: Optional[int] = None
    stop_after_phase: Optional[int] = None
    skip_phases: list[int] = Field(default_factory=list)
    enable_context: bool = False
    enable_quorum: bool = False
    interactive: bool = False


class PhaseResult(BaseModel):
    phase: ExecutionPhase
    phase_name: str
    success: bool
    duration_ms: float = 0.0
    started_at: Optional[str] = None
    completed_at: Optional[str] = None
    output_data: dict[str, Any] = Field(default_factory=dict)
    error: Optional[str] = None
    skipped: bool = False
    retry_count: int = 0

    @classmethod
    def skipped_result(cls, phase: ExecutionPhase, reason: str) -> "PhaseResult":
        return cls(phase=phase, phase_name=phase.title, success=True, skipped=True,
                   output_data={"reason": reason})


# --------------------------------------------------------------------- spend
class Usage(BaseModel):
    """What model calls consumed.  ``cost_usd`` None: no price known for the model (tokens still count);
    a sum's cost is that of the calls with a price.  ``model``: the one model called, None when several or
    unknown.  Usages add up (``a + b``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Optional[float] = None
    calls: int = 0
    model: Optional[str] = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: "Usage") -> "Usage":
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        models = {m for u in (self, other) if u.calls for m in [u.model]}
        return Usage(input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens,
                     cost_usd=round(sum(costs), 9) if costs else None, calls=self.calls + other.calls,
                     model=models.pop() if len(models) == 1 else None)


class RunUsage(BaseModel):
    """A run's spend: the total, and by phase (its name), agent and model (``unknown``: not reported)."""

    total: Usage = Field(default_factory=Usage)
    phases: dict[str, Usage] = Field(default_factory=dict)
    agents: dict[str, Usage] = Field(default_factory=dict)
    models: dict[str, Usage] = Field(default_factory=dict)


# ------------------------------------------------------------------- context
class ContextItem(BaseModel):
    """One piece of gathered context: a file range, a document, a summary."""

    id: str
    source: str
    content: str
    score: float = 0.0
    tokens: int = 0
    query: Optional[str] = None
    kind: str = "code"
    retriever: Optional[str] = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class GlobalContext(BaseModel):
    """Phase 0 output: budgeted context shared by every task."""

    items: list[ContextItem] = Field(default_factory=list)
    total_tokens: int = 0
    budget_tokens: int = 0
    queries: list[str] = Field(default_factory=list)
    per_query_hits: dict[str, int] = Field(default_factory=dict)
    retriever_timings_ms: dict[str, float] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)


class ContextChoice(BaseModel):
    """Why an item was given to a task (phase 3's report)."""

    item_id: str
    source: str
    requirement: Optional[str] = None
    score: float = 0.0
    tokens: int = 0
    reason: str = ""


class TaskContext(BaseModel):
    """Phase 3 output for one task."""

    model_config = UNCACHED_JSON

    task_id: str
    items: list[ContextItem] = Field(default_factory=list)
    total_tokens: int = 0
    budget_tokens: int = 0
    report: list[ContextChoice] = Field(default_factory=list)
    unmatched_requirements: list[str] = Field(default_factory=list)


# -------------------------------------------------------------------- quorum
Recommendation = Literal["PASS", "RETRY", "FAIL"]


class Escalation(BaseModel):
    """Why an attempt asked a higher tier of validators."""

    tier: int
    reason: Literal["disagreement", "abstentions", "low_confidence"] | str
    detail: str = ""


class ValidatorWeight(BaseModel):
    """The weight a validator voted with in a run, and where it came from."""

    weight: float
    source: Literal["configured", "learned"] = "configured"
    samples: int = 0
    accuracy: Optional[float] = None


class ValidatorVote(BaseModel):
    validator: str
    kind: str
    weight: float = 1.0
    tier: int = 0
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    json_mode: Optional[str] = None  # the structured-output form the endpoint accepted
    recommendation: Optional[Recommendation] = None  # None: abstained
    alignment_score: Optional[float] = None
    confidence: Optional[float] = None
    deficiencies: list[str] = Field(default_factory=list)
    latency_ms: float = 0.0
    error: Optional[str] = None
    cached: bool = False
    usage: Optional[Usage] = None  # this vote's call (None: cached or not asked, so nothing spent)

    @property
    def abstained(self) -> bool:
        return self.recommendation is None


class QuorumAttempt(BaseModel):
    attempt: int
    decision: Recommendation
    confidence: float
    deficiencies: list[str] = Field(default_factory=list)
    votes: list[ValidatorVote] = Field(default_factory=list)
    answered_share: float = 1.0
    backoff_s: float = 0.0
    tiers: list[int] = Field(default_factory=list)  # the tiers this attempt asked
    escalations: list[Escalation] = Field(default_factory=list)
    not_asked: list[str] = Field(default_factory=list)  # validators of higher tiers it did not need


class QuorumResult(BaseModel):
    decision: Recommendation
    confidence: float
    deficiencies: list[str] = Field(default_factory=list)
    votes: list[ValidatorVote] = Field(default_factory=list)
    attempts: list[QuorumAttempt] = Field(default_factory=list)
    retry_count: int = 0
    answered_share: float = 1.0
    quorum_reached: bool = True
    warnings: list[str] = Field(default_factory=list)
    calls_saved: int = 0  # validator calls escalation did not need
    breakdown_digest: Optional[str] = None  # sha256 of the breakdown the final attempt judged
    weights: Literal["configured", "learned"] = "configured"
    weights_used: dict[str, ValidatorWeight] = Field(default_factory=dict)
    # every call phase 1 made: the votes of all attempts and the planner's revisions
    planner_usage: Optional[Usage] = None
    usage: Optional[Usage] = None


class ValidatorStats(BaseModel):
    """One validator's record over the saved runs (``dispatch quorum stats``)."""

    validator: str
    kind: str
    tier: int = 0
    votes: int = 0
    abstentions: int = 0
    pass_votes: int = 0
    retry_votes: int = 0
    fail_votes: int = 0
    agreed: int = 0
    agreement: Optional[float] = None
    passes_scored: int = 0
    passes_then_failed: int = 0
    pass_then_failed_rate: Optional[float] = None
    edited_after: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    mean_latency_ms: Optional[float] = None


class QuorumStats(BaseModel):
    runs: int = 0
    runs_with_outcome: int = 0
    runs_failed: int = 0
    runs_edited: int = 0
    validators: list[ValidatorStats] = Field(default_factory=list)


# ------------------------------------------------------------------ planning
class TaskPlan(BaseModel):
    """Phase 2 output: the validated graph and its schedule facts."""

    model_config = UNCACHED_JSON

    order: list[str] = Field(default_factory=list)
    levels: list[list[str]] = Field(default_factory=list)
    critical_path: list[str] = Field(default_factory=list)
    critical_path_length: int = 0
    agents: dict[str, str] = Field(default_factory=dict)  # task_id -> agent kind
    dependents: dict[str, list[str]] = Field(default_factory=dict)
    # agent name -> the configuration it resolved to: what phase 4 runs, resolved here once
    agent_configs: dict[str, ComponentConfig] = Field(default_factory=dict)


# ----------------------------------------------------------------- execution
class TaskResult(BaseModel):
    model_config = UNCACHED_JSON

    task_id: str
    agent: str
    success: bool
    output: Any = None
    error: Optional[str] = None
    duration_ms: float = 0.0
    worker: Optional[str] = None
    attempts: int = 0
    started_at: Optional[str] = None
    completed_at: Optional[str] = None
    skipped: bool = False
    prompt: Optional[str] = None
    # what the task changed in its own git checkout (workspace isolation "git" only)
    changes: Optional["TaskChanges"] = None
    usage: Optional[Usage] = None  # the model calls its agent made (None: it calls none, or did not say)
    # the run paused at a budget cap before this task started: ``dispatch resume`` runs it (not a skip)
    not_run: bool = False


# --------------------------------------------------------------------- state
class StateRef(BaseModel):
    """What a phase task's message carries and returns: the run's state lives in the store, so messages stay
    small at any number of tasks.  ``version``: the state's version when the message was sent."""

    run_id: str
    version: int


class PhaseState(BaseModel):
    """Everything a run knows; snapshotted after every phase."""

    model_config = UNCACHED_JSON

    schema_version: int = SCHEMA_VERSION
    run_id: str
    version: int = 0  # raised by every save to the store: a phase task knows whether it already ran
    # phase number -> the state version its task started from: a redelivered parallel phase (its peer saved
    # since, so the version moved on) sees here that it already ran (``pipeline.phase_graph``)
    ran_from: dict[int, int] = Field(default_factory=dict)
    phases_executed: list[PhaseResult] = Field(default_factory=list)
    current_phase: int = -1
    global_context: Optional[GlobalContext] = None
    quorum_result: Optional[QuorumResult] = None
    tasks_data: list[TaskSpec] = Field(default_factory=list)
    user_prompt: str = ""
    saved_at: Optional[str] = None
    workspace_path: str = "."
    rag_queries: list[str] = Field(default_factory=list)
    run_config: RunConfig = Field(default_factory=RunConfig)
    input_extras: dict[str, Any] = Field(default_factory=dict)
    phase_config: PhaseConfig = Field(default_factory=PhaseConfig)
    selected_phases: list[int] = Field(default_factory=list)
    # the config file the run was planned with (secrets are never in it: they stay in the environment)
    config: DispatchConfig = Field(default_factory=DispatchConfig)
    plan: Optional[TaskPlan] = None
    task_contexts: dict[str, TaskContext] = Field(default_factory=dict)
    task_results: list[TaskResult] = Field(default_factory=list)
    status: RunStatus = "pending"
    started_at: Optional[str] = None
    # the git base the run recorded at submission (workspace isolation "git" only)
    workspace: Optional["WorkspaceInfo"] = None
    # phase 4's integration branch: every succeeded task's change merged onto the base
    integration: Optional["Integration"] = None
    # tasks whose changes a person dropped from the integration (interactive phase-4 [e]dit): every later
    # integration of the run (phase 4 retried, resumed) leaves them out too
    dropped_changes: list[str] = Field(default_factory=list)
    # the cap a budget pause stopped at (``status == "paused"``), e.g. "max_tokens 5000 reached (5120 used)"
    pause_reason: Optional[str] = None
    # spend of earlier attempts whose results ``dispatch resume`` dropped (failed tasks run again): it still counts
    earlier_usage: Optional[Usage] = None

    @model_validator(mode="before")
    @classmethod
    def _config_was_settings(cls, data: Any) -> Any:
        """States saved before the config became a typed field called it ``settings``."""
        if isinstance(data, dict) and "settings" in data and "config" not in data:
            data = dict(data)
            data["config"] = data.pop("settings")
        return data

    def result_for(self, phase: ExecutionPhase) -> Optional[PhaseResult]:
        """The latest recorded result of ``phase``, if any."""
        for result in reversed(self.phases_executed):
            if result.phase == phase:
                return result
        return None

    def has_completed(self, phase: ExecutionPhase) -> bool:
        result = self.result_for(phase)
        return bool(result and result.success and not result.skipped)

    def record(self, result: PhaseResult) -> None:
        """Replace any earlier result of the same phase, keeping phase order."""
        self.phases_executed = [r for r in self.phases_executed if r.phase != result.phase]
        self.phases_executed.append(result)
        self.phases_executed.sort(key=lambda r: r.phase.number)
        if not result.skipped:
            self.current_phase = max(self.current_phase, result.phase.number)

    def ref(self) -> "StateRef":
        return StateRef(run_id=self.run_id, version=self.version)

    def request(self) -> DispatchInput:
        """The input as the phases now see it (edits and re-plans applied)."""
        return DispatchInput(user_prompt=self.user_prompt, workspace_path=self.workspace_path,
                             rag_queries=self.rag_queries, tasks=self.tasks_data,
                             config=self.run_config, **self.input_extras)


# -------------------------------------------------------------------- output
class PhaseTiming(BaseModel):
    phase: ExecutionPhase
    duration_ms: float
    success: bool
    skipped: bool


class TimingSummary(BaseModel):
    total_duration_ms: float
    phases: list[PhaseTiming]


class DispatchOutput(BaseModel):
    """The JSON document printed on stdout at the end of a run."""

    success: bool
    run_id: str
    status: str
    timing_summary: TimingSummary
    phases_executed: list[PhaseResult]
    results: list[TaskResult] = Field(default_factory=list)
    quorum_result: Optional[QuorumResult] = None
    context_summary: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    state_file: Optional[str] = None
    # the integration branch phase 4 ended with (workspace isolation "git" only)
    integration: Optional["Integration"] = None
    usage: Optional[RunUsage] = None  # None: no model was called
    pause_reason: Optional[str] = None


# ------------------------------------------------------------- coding agents
class CodingReport(BaseModel):
    """What a coding agent reported, the same shape for every CLI.  ``None`` means
    the CLI does not report that figure (never a guessed zero)."""

    agent: str
    cli: str
    success: bool
    final_message: Optional[str] = None
    turns: Optional[int] = None
    tokens_in: Optional[int] = None
    tokens_out: Optional[int] = None
    cost_usd: Optional[float] = None
    session_id: Optional[str] = None
    error: Optional[str] = None
    exit_code: Optional[int] = None
    timed_out: bool = False
    duration_ms: float = 0.0
    command: list[str] = Field(default_factory=list)
    stderr: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------ agent payload
class AgentPayload(BaseModel):
    """Everything one agent task reads, resolved once at fan-out and kept in the store (never in the message)."""

    model_config = UNCACHED_JSON

    task: TaskSpec
    agent: ComponentConfig
    context: Optional[TaskContext] = None
    user_prompt: str = ""
    workspace_path: str = "."
    timeout_s: float  # the effective limit (``dispatch.agents.task_timeout``), which also sets Celery's limits
    progress_every: int = 1
    # unknown top-level input keys; the reviewer's note for the quorum planner is not one
    request_extras: dict[str, Any] = Field(default_factory=dict)
    # set when the task runs in a git checkout of its own (its agent may edit files)
    workspace: Optional["WorkspaceInfo"] = None
    workspace_options: Optional[WorkspaceOptions] = None
    dependency_order: list[str] = Field(default_factory=list)  # its dependencies in the plan's order
    # [prices] (a call's cost is computed where it is made) and the per-task cap its agent stops at
    prices: dict[str, Price] = Field(default_factory=dict)
    max_cost_usd: Optional[float] = None


# ---------------------------------------------------------------- workspace
# The git side of a run (dispatch.workspace): the base recorded at submission, what each task
# changed, and the one integration branch.  Commits are full hex object names.
class WorkspaceInfo(BaseModel):
    """What a run records at submission: where its tasks' checkouts start from."""

    isolation: Literal["git", "shared"]
    run_id: str
    repo: Optional[str] = None  # the user's work tree (top level), on the submitting machine
    subdir: str = ""  # workspace_path relative to the top level ("" when it is the top level)
    base: Optional[str] = None  # the base commit
    base_ref: Optional[str] = None  # refs/dispatch/<run_id>/base
    head: Optional[str] = None  # the user's HEAD at submission (None on an unborn branch)
    snapshot: bool = False  # True: base holds uncommitted/untracked files on top of head
    source: Optional[str] = None  # "worktree" (HEAD plus what the user sees) or the base_ref given
    remote: Optional[str] = None  # where workers fetch from and push to (None: the repo itself)


class FileChange(BaseModel):
    path: str  # relative to the repository's top level
    added: int = 0
    deleted: int = 0
    binary: bool = False  # counted 0/0


class TaskChanges(BaseModel):
    """One task's change: the single commit ``commit`` on ``ref``, whose parent is ``base``."""

    base: str  # the task's start commit: the run's base plus its dependencies' changes
    commit: str
    ref: str
    files: list[FileChange] = Field(default_factory=list)
    patch: str = ""  # unified diff base..commit, cut at a line end to the configured cap
    patch_bytes: int = 0  # the full patch's size in bytes (> len(patch) when cut)
    outside_scope: list[str] = Field(default_factory=list)  # changed files outside the task's writes
    kept_checkout: Optional[str] = None  # the checkout's path when [workspace] keep is set


class IntegrationConflict(BaseModel):
    """A task left out of the integration: the files, and the merged tasks (``with``) it collides with."""

    model_config = ConfigDict(populate_by_name=True)

    task_id: str
    files: list[str] = Field(default_factory=list)
    with_: list[str] = Field(default_factory=list, alias="with")  # ``with`` is a Python keyword
    reason: str = ""

    @model_serializer(mode="wrap")
    def _dump_with(self, handler: Any) -> dict[str, Any]:
        return {("with" if key == "with_" else key): value for key, value in handler(self).items()}


class Integration(BaseModel):
    """The integration branch: every merged task's change on top of the base, in topological order."""

    ref: str  # refs/heads/dispatch/<run_id>
    commit: str
    base: Optional[str] = None
    merged: list[str] = Field(default_factory=list)
    resolved: list[str] = Field(default_factory=list)  # merged through the resolver
    conflicts: list[IntegrationConflict] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)  # left out on purpose (interactive [e]dit); refs kept


TaskResult.model_rebuild()
AgentPayload.model_rebuild()
PhaseState.model_rebuild()
DispatchOutput.model_rebuild()
