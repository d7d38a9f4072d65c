"""The interactive session file: the whole human-in-the-loop workflow in one JSON document.

A session holds the run's ``PhaseState`` (with every accepted edit already
applied), what was decided at each checkpoint, and the flags the run started
with.  It is rewritten atomically after every step, so ``--resume-session``
can pick up at the first undecided checkpoint without re-running a phase that
already finished and without losing an edit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError

from dispatch.config import format_validation_error
from dispatch.errors import StateFileError
from dispatch.models import PhaseConfig, PhaseState, TaskSpec, iso, utcnow
from dispatch.store.state import atomic_write

SESSION_SCHEMA_VERSION = 1
SESSION_KIND = "dispatch.session"

Action = Literal["approve", "edit", "retry", "skip", "batch-approve", "quit"]


class Checkpoint(BaseModel):
    """A place where the run stops for a human: after phase N, or before phase 4 when 3 did not run."""

    when: Literal["after", "before"]
    phase: int

    @property
    def key(self) -> str:
        return f"{self.when}-{self.phase}"


def checkpoints_for(phases: list[int]) -> list[Checkpoint]:
    """One checkpoint after each selected phase, plus one before phase 4 unless phase 3's covers it."""
    points = []
    for number in phases:
        if number == 4 and 3 not in phases:
            points.append(Checkpoint(when="before", phase=4))
        points.append(Checkpoint(when="after", phase=number))
    return points


class Decision(BaseModel):
    """One action taken at a checkpoint, in the order it was taken."""

    checkpoint: str
    action: Action
    at: str = Field(default_factory=lambda: iso(utcnow()))
    auto: bool = False  # taken by batch-approve, not typed
    feedback: Optional[str] = None  # typed with a retry
    target: Optional[str] = None  # what an edit replaced: "tasks_data", "global_context" or "integration"
    value: Any = None  # the accepted edit, as JSON
    rerun: list[int] = Field(default_factory=list)  # phases re-run because of this action


class SessionFlags(BaseModel):
    """The command-line flags that are not phase selection (that lives in ``phase_config``)."""

    input_file: Optional[str] = None
    load_phase_state: Optional[str] = None
    save_phase_state: Optional[str] = None
    config: Optional[str] = None
    quiet: bool = False


class Session(BaseModel):
    schema_version: int = SESSION_SCHEMA_VERSION
    kind: Literal["dispatch.session"] = SESSION_KIND
    run_id: str
    created_at: str = Field(default_factory=lambda: iso(utcnow()))
    updated_at: Optional[str] = None
    status: Literal["open", "paused", "finished"] = "open"
    flags: SessionFlags = Field(default_factory=SessionFlags)
    phase_config: PhaseConfig = Field(default_factory=PhaseConfig)
    selected_phases: list[int] = Field(default_factory=list)
    ran: list[int] = Field(default_factory=list)  # phases this session executed (their results are in state)
    decided: dict[str, Literal["approve", "skip"]] = Field(default_factory=dict)
    batch: bool = False
    history: list[Decision] = Field(default_factory=list)
    run_ms: float = 0.0  # time spent running phases, across every resume; checkpoint time excluded
    tasks_before_quorum: Optional[list[TaskSpec]] = None  # restored when phase 1 is skipped
    state: PhaseState

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return checkpoints_for(self.selected_phases)

    def pending(self) -> Optional[Checkpoint]:
        """The first checkpoint not yet decided (the one a resume shows first)."""
        skipped = {int(key.split("-")[1]) for key, action in self.decided.items() if action == "skip"}
        for point in self.checkpoints:
            if point.key in self.decided or (point.when == "after" and point.phase in skipped):
                continue
            return point
        return None

    def actions_at(self, key: str) -> list[Decision]:
        return [d for d in self.history if d.checkpoint == key]

    def record(self, decision: Decision) -> None:
        self.history.append(decision)
        if decision.action in ("approve", "batch-approve"):
            self.decided[decision.checkpoint] = "approve"
        elif decision.action == "skip":
            self.decided[decision.checkpoint] = "skip"

    def save(self, path: str | Path) -> None:
        self.updated_at = iso(utcnow())
        try:
            atomic_write(Path(path), self.model_dump_json(indent=2))
        except OSError as exc:
            raise StateFileError(f"{path}: cannot write session ({exc.strerror or exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> "Session":
        """Read and validate; a corrupt, truncated or foreign file is a ``StateFileError`` (exit 2)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateFileError(f"{path}: cannot read session file "
                                 f"({getattr(exc, 'strerror', None) or exc})") from None
        if not text.strip():
            raise StateFileError(f"{path}: empty file, not a dispatch session")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateFileError(f"{path}: corrupt or truncated session at line {exc.lineno}, "
                                 f"column {exc.colno}: {exc.msg}") from None
        if not isinstance(raw, dict) or raw.get("kind") != SESSION_KIND:
            hint = " (it looks like a phase state: use --load-phase-state)" \
                if isinstance(raw, dict) and "phases_executed" in raw else ""
            raise StateFileError(f"{path}: not a dispatch session file{hint}")
        if raw.get("schema_version") != SESSION_SCHEMA_VERSION:
            raise StateFileError(f"{path}: session schema_version {raw.get('schema_version')!r} is not supported "
                                 f"(this dispatch reads version {SESSION_SCHEMA_VERSION})")
        try:
            session = cls.model_validate(raw)
        except ValidationError as exc:
            raise StateFileError(f"{path}: invalid session: {format_validation_error(exc)}") from None
        if session.state.run_id != session.run_id:
            raise StateFileError(f"{path}: invalid session: its state belongs to run {session.state.run_id!r}, "
                                 f"not {session.run_id!r}")
        return session
