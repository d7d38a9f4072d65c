"""What every coding-agent preset shares: options, environment, running the CLI, deciding.

A coding agent (Claude Code, Codex, aider, ...) is a program that edits the
files of the directory it runs in.  The ``shell`` kind can start one, but each
CLI needs its own flags for a non-interactive run, its own variables to point it
at a model and to keep it quiet (telemetry and update checks off), and each
reports what happened in its own format.  A preset knows those three things for
one CLI; this module does the rest the same way for all of them: the
environment (an allow-list, plus variables passed by NAME so a secret never sits
in a config file), a private scratch directory for the CLI's side files, the
process (``dispatch.agents.process``: own process group, timeout, capped
output), cleaning the CLI's caches out of the checkout (the workspace engine
would otherwise commit them as the task's change), and the outcome.

The outcome's ``output`` is a ``CodingReport``.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, Field, field_validator

from dispatch.agents.base import Agent, AgentInvocation, AgentOptions, AgentOutcome
from dispatch.agents.process import ProcessResult, run_process
from dispatch.agents.shell import DEFAULT_ENV_ALLOW
from dispatch.models import CodingReport, Usage

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
# Names that hold credentials: their values must come from the worker's environment, by name.
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)", re.IGNORECASE)
STDERR_KEEP_CHARS = 4000
PROMPT_PLACEHOLDER = "<prompt>"


class CodingOptions(AgentOptions):
    """Options of every preset.  ``env_pass`` names worker variables (globs such as
    ``ANTHROPIC_*`` allowed) copied into the CLI's environment; ``api_key_env`` names
    the variable holding the key, handed to the CLI under the name it expects."""

    executable: Optional[str] = None
    model: Optional[str] = None
    max_turns: Optional[int] = Field(default=None, gt=0)
    allowed_tools: Optional[list[str]] = None
    extra_args: list[str] = Field(default_factory=list)
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None
    env_pass: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    kill_grace_s: float = Field(default=5.0, ge=0)
    max_output_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    @field_validator("env_pass")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not ENV_NAME.match(name):
                raise ValueError(f"env_pass: '{name}' is not a variable name (values never go here)")
        return names

    @field_validator("api_key_env")
    @classmethod
    def _key_name(cls, name: Optional[str]) -> Optional[str]:
        if name is not None and (not ENV_NAME.match(name) or name.endswith("*")):
            raise ValueError(f"api_key_env: '{name}' must be the NAME of a variable holding the key, not the key")
        return name

    @field_validator("env")
    @classmethod
    def _no_inline_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if SECRET_NAME.search(name):
                raise ValueError(f"env: '{name}' looks like a secret; pass it by name "
                                 f"(env_pass = [\"{name}\"] or api_key_env = \"...\") instead of its value")
        return env


@dataclass
class Parsed:
    """What a preset read from its CLI's output."""

    success: bool
    final_message: Optional[str] = None
    turns: Optional[int] = None
    tokens_in: Optional[int] = None
    tokens_out: Optional[int] = None
    cost_usd: Optional[float] = None
    session_id: Optional[str] = None
    error: Optional[str] = None
    transient: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Launch:
    """How to start the CLI for one task."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: Optional[bytes] = None


class CodingAgent(Agent):
    """A preset: ``launch`` builds the command, ``parse`` reads what the CLI reported.

    ``quiet_env`` turns telemetry, error reporting and update checks off;
    ``litter`` are paths (relative to the working directory) the CLI creates for
    itself, removed after the run when they did not exist before it.
    """

    Options: ClassVar[type[BaseModel]] = CodingOptions
    program: ClassVar[str] = ""
    quiet_env: ClassVar[dict[str, str]] = {}
    litter: ClassVar[tuple[str, ...]] = ()

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        raise NotImplementedError

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        raise NotImplementedError

    # ------------------------------------------------------------------ running
    def run(self, inv: AgentInvocation) -> AgentOutcome:
        opts: CodingOptions = self.options
        workspace = os.path.abspath(inv.workspace_path)
        if not os.path.isdir(workspace):
            return AgentOutcome.fail(f"workspace '{inv.workspace_path}' is not a directory on this worker")
        try:
            provider_env = self._provider_env()
        except LookupError as exc:
            return AgentOutcome.fail(str(exc))
        timeout_s = opts.timeout_s or inv.timeout_s
        existing = {name for name in self.litter if os.path.lexists(os.path.join(workspace, name))}
        scratch = tempfile.mkdtemp(prefix=f"dispatch-{self.kind}-")
        try:
            plan = self.launch(inv, inv.prompt, scratch)
            argv = plan.argv + list(opts.extra_args)
            env = self._environment(inv, {**provider_env, **plan.env})
            try:
                result = run_process(argv, cwd=workspace, env=env, stdin=plan.stdin, timeout_s=timeout_s,
                                     kill_grace_s=opts.kill_grace_s, max_output_bytes=opts.max_output_bytes)
            except OSError as exc:
                return AgentOutcome.fail(_start_error(argv[0], exc))
            try:
                parsed = self.parse(result, scratch)
            except (ValueError, KeyError, TypeError) as exc:
                parsed = Parsed(False, error=f"cannot read what {self.program} reported: {exc}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self._sweep(workspace, existing)
        return self._decide(result, parsed, argv, inv.prompt, timeout_s)

    def executable(self) -> str:
        return self.options.executable or self.program

    def _provider_env(self) -> dict[str, str]:
        """The model endpoint and key, under the names this CLI reads."""
        opts: CodingOptions = self.options
        env: dict[str, str] = {}
        if opts.api_key_env:
            value = os.environ.get(opts.api_key_env)
            if not value:
                raise LookupError(f"api_key_env: variable '{opts.api_key_env}' is not set on this worker")
            env.update(self.key_env(value))
        if opts.base_url:
            env.update(self.base_url_env(opts.base_url))
        return env

    def key_env(self, key: str) -> dict[str, str]:
        """Variables that hand ``key`` to the CLI (overridden per preset)."""
        return {}

    def base_url_env(self, url: str) -> dict[str, str]:
        """Variables that point the CLI at ``url`` (overridden per preset)."""
        return {}

    def _environment(self, inv: AgentInvocation, extra: dict[str, str]) -> dict[str, str]:
        opts: CodingOptions = self.options
        patterns = DEFAULT_ENV_ALLOW + opts.env_pass
        env = {k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        env.update(self.quiet_env)
        env.update(opts.env)
        env.update(extra)
        env.update({"DISPATCH_TASK_ID": inv.task.task_id, "DISPATCH_RUN_ID": inv.run_id,
                    "DISPATCH_ATTEMPT": str(inv.attempt),
                    "DISPATCH_IDEMPOTENCY_KEY": f"{inv.run_id}:{inv.task.task_id}:{inv.attempt}"})
        return env

    def _sweep(self, workspace: str, existing: set[str]) -> None:
        for name in self.litter:
            path = os.path.join(workspace, name)
            if name in existing or not os.path.lexists(path):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _decide(self, result: ProcessResult, parsed: Parsed, argv: list[str], prompt: str,
                timeout_s: float) -> AgentOutcome:
        error = parsed.error
        success = parsed.success and result.returncode == 0 and not result.timed_out
        if result.timed_out:
            error = f"timed out after {timeout_s:g}s"
        elif result.returncode != 0:
            reason = (f"killed by signal {-result.returncode}" if result.returncode is not None
                      and result.returncode < 0 else f"exit code {result.returncode}")
            error = f"{self.program} {reason}: {error or _last_line(result.stderr.text) or 'no message'}"
        elif not parsed.success and not error:
            error = f"{self.program} reported failure"
        report = CodingReport(
            agent=self.name, cli=self.kind, success=success, final_message=parsed.final_message,
            turns=parsed.turns, tokens_in=parsed.tokens_in, tokens_out=parsed.tokens_out,
            cost_usd=parsed.cost_usd, session_id=parsed.session_id, error=None if success else error,
            exit_code=result.returncode, timed_out=result.timed_out, duration_ms=round(result.duration_ms, 1),
            command=[PROMPT_PLACEHOLDER if arg == prompt else arg for arg in argv],
            stderr=result.stderr.text[-STDERR_KEEP_CHARS:], details=parsed.details)
        output = report.model_dump(mode="json")
        outcome = AgentOutcome.ok(output) if success else \
            AgentOutcome.fail(error or "failed", output, transient=parsed.transient and not result.timed_out)
        outcome.usage = reported_usage(report, self.options.model)
        return outcome


def reported_usage(report: CodingReport, model: Optional[str]) -> Optional[Usage]:
    """What the CLI said it spent: its tokens, and its own cost (which wins over the price table); None
    when it reports neither, never a guessed zero."""
    if report.tokens_in is None and report.tokens_out is None and report.cost_usd is None:
        return None
    return Usage(input_tokens=report.tokens_in or 0, output_tokens=report.tokens_out or 0,
                 cost_usd=report.cost_usd, calls=max(1, report.turns or 1), model=model)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL stream, skipping anything else (log lines, a truncation marker)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def flag_list(flag: str, values: Optional[list[str]]) -> list[str]:
    """``--flag a,b`` when values are given, nothing otherwise."""
    return [flag, ",".join(values)] if values else []


def _start_error(program: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return (f"command not found: {program} (install it on the worker or set `executable` "
                f"to its path)")
    if isinstance(exc, PermissionError):
        return f"permission denied: {program}"
    return f"cannot start {program}: {exc.strerror or exc}"


def _last_line(text: str, limit: int = 300) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[:limit] + "..."
    return ""
