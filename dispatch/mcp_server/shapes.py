"""What the MCP tools answer, as pydantic models: the SDK publishes their JSON Schemas as the
tools' output schemas, and validates every answer against them.

They are views over the project's own models (``dispatch.models``): a run's
``DispatchOutput`` is what the CLI prints, carried whole, and the per-task and
per-phase summaries are cut from ``TaskResult`` and ``PhaseResult`` so an
agent reads what it needs without the run's full state.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from dispatch.models import DispatchOutput, ExecutionPhase, QuorumResult, Recommendation, RunStatus, TaskPlan

Mode = Literal["embedded", "distributed"]


def run_uri(run_id: str) -> str:
    return f"dispatch://runs/{run_id}"


class ValidationReport(BaseModel):
    """``validate``: phases 1-2 only (the quorum's verdict and the plan), no agent runs."""

    valid: bool = Field(description="the quorum did not FAIL the breakdown and phase 2 planned it")
    run_id: str
    status: RunStatus
    decision: Optional[Recommendation] = None
    confidence: Optional[float] = None
    deficiencies: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    error: Optional[str] = None
    quorum: Optional[QuorumResult] = None
    plan: Optional[TaskPlan] = None


class PhaseSummary(BaseModel):
    number: int
    phase: ExecutionPhase
    success: bool
    skipped: bool
    duration_ms: float
    error: Optional[str] = None


class TaskOutcome(BaseModel):
    """One task of a run: how it ended, what it produced, what it spent."""

    task_id: str
    agent: str
    status: Literal["succeeded", "failed", "skipped", "cancelled", "timed_out"]
    success: bool
    output: Any = None
    error: Optional[str] = None
    changes: Any = Field(default=None, description="what the task changed in the workspace, when recorded")
    usage: dict[str, Any] = Field(default_factory=dict, description="tokens and cost the agent reported")
    duration_ms: float = 0.0
    worker: Optional[str] = None
    attempts: int = 0


class RunStatusReport(BaseModel):
    run_id: str
    status: RunStatus
    mode: Mode
    started_at: Optional[str] = None
    saved_at: Optional[str] = None
    selected_phases: list[int] = Field(default_factory=list)
    phases: list[PhaseSummary] = Field(default_factory=list)
    tasks_total: int = 0
    tasks_finished: int = Field(default=0, description="agent tasks finished so far (live during phase 4)")
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    error: Optional[str] = Field(default=None, description="why a run this server followed stopped early")
    resource: str


class RunResults(BaseModel):
    run_id: str
    status: RunStatus
    success: bool
    finished: bool = Field(description="false while the run is still pending or running")
    error: Optional[str] = None
    tasks: list[TaskOutcome] = Field(default_factory=list)
    output: DispatchOutput = Field(description="the JSON document the CLI prints for this run")


class RunReply(BaseModel):
    """``run`` and ``resume``: the run id at once, or (with ``wait``) the results too."""

    run_id: str
    status: RunStatus
    mode: Mode
    phases: list[int]
    resource: str
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    results: Optional[RunResults] = None


class CancelReport(BaseModel):
    run_id: str
    previous_status: str
    status: str
    revoked: int
    finished_tasks: int


class RunList(BaseModel):
    runs: list[RunStatusReport]
