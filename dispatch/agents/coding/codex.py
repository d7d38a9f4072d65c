"""``codex``: OpenAI's Codex CLI, ``codex exec --json``, one task per run.

Config (TOML)::

    [agents.codex]
    kind = "codex"
    model = "gpt-5-codex"               # --model
    sandbox = "workspace-write"         # --sandbox: read-only | workspace-write | danger-full-access
    profile = "work"                    # --profile (a profile of the user's CODEX_HOME)
    provider = "ollama"                 # model_provider of the user's config
    base_url = "http://127.0.0.1:8080/v1"   # or: a provider defined here (Responses API)
    api_key_env = "MY_OPENAI_KEY"       # the key's variable NAME
    config = { model_reasoning_effort = "high" }   # more ``-c key=value`` overrides (TOML values)

The prompt goes on stdin (``-``).  The JSONL events on stdout are read:
``thread.started`` (session id), the last ``agent_message`` item (final
message), ``turn.completed`` usage (tokens), ``turn.failed``/``error``
(failure), ``command_execution`` and ``file_change`` items (in ``details``).
``turns`` counts Codex turns (one per run of ``exec``); Codex reports no cost.
Telemetry, feedback and the update check are switched off with ``-c`` overrides,
so the user's own ``config.toml`` stays as it is.  Flags and config keys checked
against codex-cli 0.171.0 (``codex exec --help``; keys accepted by
``--strict-config``).  Codex has no max-turns or tool allow-list: those options
are refused rather than silently ignored.
"""
from __future__ import annotations

import json
import os
from typing import Any, Literal, Optional

from pydantic import model_validator

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed, json_lines
from dispatch.agents.process import ProcessResult

PROVIDER_NAME = "dispatch"
PROVIDER_KEY_VAR = "DISPATCH_CODEX_API_KEY"
QUIET_OVERRIDES = ["analytics.enabled=false", "feedback.enabled=false", 'otel.exporter="none"',
                   "check_for_update_on_startup=false"]
LAST_MESSAGE_FILE = "last-message.txt"


class CodexOptions(CodingOptions):
    sandbox: Literal["read-only", "workspace-write", "danger-full-access"] = "workspace-write"
    profile: Optional[str] = None
    provider: Optional[str] = None
    config: dict[str, Any] = {}

    @model_validator(mode="after")
    def _supported(self) -> "CodexOptions":
        if self.max_turns is not None:
            raise ValueError("max_turns: codex exec has no turn limit (use timeout_s)")
        if self.allowed_tools is not None:
            raise ValueError("allowed_tools: codex has no tool allow-list (use sandbox)")
        if self.provider and self.base_url:
            raise ValueError("provider and base_url exclude each other")
        return self


@AGENTS.register("codex")
class CodexAgent(CodingAgent):
    Options = CodexOptions
    program = "codex"

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: CodexOptions = self.options
        argv = [self.executable(), "exec", "--json", "--skip-git-repo-check", "--color", "never",
                "--sandbox", opts.sandbox, "-o", os.path.join(scratch, LAST_MESSAGE_FILE)]
        overrides = list(QUIET_OVERRIDES)
        if opts.base_url:
            provider = {"name": PROVIDER_NAME, "base_url": opts.base_url, "wire_api": "responses"}
            if opts.api_key_env:
                provider["env_key"] = PROVIDER_KEY_VAR
            overrides += [f"model_providers.{PROVIDER_NAME}={_toml_inline(provider)}",
                          f'model_provider="{PROVIDER_NAME}"']
        elif opts.provider:
            overrides.append(f"model_provider={json.dumps(opts.provider)}")
        overrides += [f"{key}={_toml_value(value)}" for key, value in opts.config.items()]
        for override in overrides:
            argv += ["-c", override]
        if opts.profile:
            argv += ["--profile", opts.profile]
        if opts.model:
            argv += ["--model", opts.model]
        return Launch(argv + ["-"], stdin=prompt.encode())

    def key_env(self, key: str) -> dict[str, str]:
        # With a provider defined here the key travels under its env_key; else Codex's own variable.
        return {PROVIDER_KEY_VAR if self.options.base_url else "CODEX_API_KEY": key}

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        events = json_lines(result.stdout.text)
        session_id = final = error = None
        turns = tokens_in = tokens_out = cached = 0
        commands: list[dict[str, Any]] = []
        file_changes: list[Any] = []
        warnings: list[str] = []
        for event in events:
            kind = event.get("type")
            if kind == "thread.started":
                session_id = event.get("thread_id")
            elif kind == "turn.completed":
                turns += 1
                usage = event.get("usage") or {}
                tokens_in += int(usage.get("input_tokens") or 0)
                cached += int(usage.get("cached_input_tokens") or 0)
                tokens_out += int(usage.get("output_tokens") or 0)
            elif kind == "turn.failed":
                error = ((event.get("error") or {}).get("message")) or "turn failed"
            elif kind == "error":
                error = event.get("message") or "error"
            elif kind == "item.completed":
                item = event.get("item") or {}
                if item.get("type") == "agent_message":
                    final = item.get("text")
                elif item.get("type") == "command_execution":
                    commands.append({"command": item.get("command"), "exit_code": item.get("exit_code")})
                elif item.get("type") == "file_change":
                    file_changes.extend(item.get("changes") or [])
                elif item.get("type") == "error":
                    warnings.append(str(item.get("message")))
        last_file = os.path.join(scratch, LAST_MESSAGE_FILE)
        if final is None and os.path.isfile(last_file):
            with open(last_file, encoding="utf-8", errors="replace") as fh:
                final = fh.read().strip() or None
        if not events and error is None:
            error = "codex printed no events"
        details: dict[str, Any] = {"commands": commands, "file_changes": file_changes,
                                   "cached_input_tokens": cached}
        if warnings:
            details["warnings"] = warnings
        return Parsed(error is None and turns > 0, final_message=final, turns=turns,
                      tokens_in=tokens_in if turns else None, tokens_out=tokens_out if turns else None,
                      session_id=session_id, error=error, transient=_transient(error), details=details)


def _transient(error: Optional[str]) -> bool:
    text = (error or "").lower()
    return any(mark in text for mark in ("429", "rate limit", "stream disconnected", "503", "502", "timeout"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return _toml_inline(value)
    raise ValueError(f"config: cannot write {type(value).__name__} as TOML")


def _toml_inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key} = {_toml_value(value)}" for key, value in table.items()) + "}"
