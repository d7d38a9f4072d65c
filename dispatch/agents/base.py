"""The agent contract: what phase 4 hands an agent, what it gets back, and how a
task's ``agent`` name becomes a configured instance.

Agents are plain classes with no Celery in them, so every kind is tested on its
own and the Celery agent task stays a thin wrapper around :func:`run_agent`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dispatch.config import ComponentConfig, format_validation_error, redact_text
from dispatch.errors import ConfigError
from dispatch.models import TaskContext, TaskSpec, Usage
from dispatch.common.registry import Registry
from dispatch.common.text import truncate
from dispatch.agents.prompt import build_prompt

AGENTS: Registry["Agent"] = Registry("agent")

# An error message longer than this is cut: it lands in state, logs and Flower.
MAX_ERROR_CHARS = 4000


@dataclass
class AgentInvocation:
    """Everything one attempt of one task knows.  ``prompt`` is built by
    :func:`build_prompt` when not given, so every agent kind sees the same text and
    the runner can store it in the ``TaskResult``."""

    task: TaskSpec
    context: Optional[TaskContext]
    dependency_outputs: dict[str, Any]
    user_prompt: str
    workspace_path: str
    run_id: str
    attempt: int
    timeout_s: float
    prompt: str = ""
    # unknown top-level input keys: kept and handed to agents, never silently dropped
    request_extras: dict[str, Any] = field(default_factory=dict)
    # [prices] by model, and the task's spend cap (an agent that calls models stops once past it)
    prices: dict[str, Any] = field(default_factory=dict)
    max_cost_usd: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.prompt:
            self.prompt = build_prompt(self.task, self.context, self.dependency_outputs, self.user_prompt,
                                       self.request_extras)


@dataclass
class AgentOutcome:
    """The result of one attempt.  ``transient`` marks failures worth a retry
    (HTTP 429/5xx, a reset connection); a task's own failure is never transient."""

    success: bool
    output: Any = None
    error: Optional[str] = None
    transient: bool = False
    usage: Optional[Usage] = None  # the model calls this attempt made (tokens, cost when known)
    retry_after_s: Optional[float] = None  # a transient failure's server-given wait (HTTP Retry-After)

    @classmethod
    def ok(cls, output: Any = None) -> "AgentOutcome":
        return cls(True, output)

    @classmethod
    def fail(cls, error: str, output: Any = None, *, transient: bool = False,
             retry_after_s: Optional[float] = None) -> "AgentOutcome":
        return cls(False, output, error, transient, retry_after_s=retry_after_s)


class AgentOptions(BaseModel):
    """Options every kind accepts.  ``timeout_s`` is the per-agent override of the
    run's ``timeout_seconds``; the runner puts the effective limit in
    ``AgentInvocation.timeout_s``.  Unknown keys are refused (typos), and numbers
    are strict and finite in every kind (``true``, ``"5"`` and ``1e999`` are
    refused at planning time, not found out by every task at run time)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    timeout_s: Optional[float] = Field(default=None, gt=0, le=30 * 24 * 3600)
    # what one task of this agent is expected to cost: reserved against [budget] before it starts
    estimated_cost_usd: Optional[float] = Field(default=None, ge=0)


class Agent:
    """Base class of every kind.

    A kind declares ``Options`` (a subclass of ``AgentOptions``), so a
    typo in the config file (``comand``) is a ``ConfigError`` at planning time
    rather than a silently ignored key.  ``run`` may raise; :func:`run_agent`
    turns that into a failed outcome.
    """

    kind: ClassVar[str] = "agent"
    Options: ClassVar[type[BaseModel]] = AgentOptions
    # whether the kind may change files in its workspace: only those get a git checkout of their own
    edits_files: ClassVar[bool] = True

    def __init__(self, name: str, config: ComponentConfig) -> None:
        self.name = name
        self.config = config
        self.options: Any = self.parse_options(config.options)

    def parse_options(self, raw: dict[str, Any]) -> Any:
        try:
            return self.Options.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"agent '{self.name}' ({self.kind}): {format_validation_error(exc)}") from None

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind!r}>"


def run_agent(agent: Agent, inv: AgentInvocation) -> AgentOutcome:
    """Run one attempt and always return an outcome whose output is JSON.

    Whatever goes wrong inside an agent (a bug, an unexpected exception, an
    output Celery's JSON serializer would choke on) becomes a failed outcome
    with a message: a lost result would hang the chord waiting for it.
    """
    try:
        outcome = agent.run(inv)
    except (Exception, SystemExit) as exc:
        return AgentOutcome.fail(redact_text(truncate(describe_exception(exc), MAX_ERROR_CHARS)),
                                 transient=bool(getattr(exc, "transient", False)),
                                 retry_after_s=getattr(exc, "retry_after", None))
    if not isinstance(outcome, AgentOutcome):
        return AgentOutcome.fail(f"agent '{agent.name}' returned {type(outcome).__name__}, not an AgentOutcome")
    try:
        json.dumps(outcome.output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        failed = AgentOutcome.fail(f"agent output is not JSON-serializable: {exc}",
                                   output=truncate(repr(outcome.output), MAX_ERROR_CHARS))
        failed.usage = outcome.usage  # what it spent was spent all the same
        return failed
    if outcome.error is not None:  # an error lands in state, logs and Flower: a tool's echoed credential does not
        outcome.error = redact_text(truncate(str(outcome.error), MAX_ERROR_CHARS))
    elif not outcome.success:
        outcome.error = "agent reported failure without a message"
    return outcome


def describe_exception(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

