"""``opencode``: OpenCode's ``opencode run --format json``, one task per run.

Config (TOML)::

    [agents.opencode]
    kind = "opencode"
    model = "anthropic/claude-sonnet-4-5"   # -m provider/model (providers come from opencode's config)
    agent_name = "build"                    # --agent
    auto_approve = true                     # --auto: approve permissions not explicitly denied
    env_pass = ["ANTHROPIC_API_KEY"]

The prompt is the message argument.  The JSON events it prints are read:
``text`` parts (the last is the final message), ``step_finish`` parts (one per
model step: ``tokens.input``/``output``/``cache``, ``cost``), ``tool_use``
parts, ``error`` and the ``sessionID``.  The model endpoint and its key are
provider settings of opencode's own config (``opencode.json``), so
``base_url``/``api_key_env`` are refused here.  Autoupdate, sharing and the
models.dev fetch are off (``OPENCODE_DISABLE_*``).  Verified against the
documented flags and the strings of opencode-ai 1.18.33 (``opencode run --help``,
its event emitter), not against a running model.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import model_validator

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed, json_lines
from dispatch.agents.process import ProcessResult


class OpenCodeOptions(CodingOptions):
    agent_name: Optional[str] = None
    auto_approve: bool = True

    @model_validator(mode="after")
    def _supported(self) -> "OpenCodeOptions":
        for name in ("max_turns", "allowed_tools", "base_url", "api_key_env"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: not an opencode run flag (set it in opencode.json)")
        return self


@AGENTS.register("opencode")
class OpenCodeAgent(CodingAgent):
    Options = OpenCodeOptions
    program = "opencode"
    quiet_env = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
                 "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: OpenCodeOptions = self.options
        argv = [self.executable(), "run", "--format", "json"]
        if opts.model:
            argv += ["-m", opts.model]
        if opts.agent_name:
            argv += ["--agent", opts.agent_name]
        if opts.auto_approve:
            argv.append("--auto")
        return Launch(argv + ["--", prompt])

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        events = json_lines(result.stdout.text)
        final = session_id = error = None
        steps = tokens_in = tokens_out = 0
        cost = 0.0
        tools: list[Any] = []
        for event in events:
            session_id = event.get("sessionID") or session_id
            part = event.get("part") or {}
            kind = event.get("type")
            if kind == "text" and part.get("text"):
                final = part["text"].strip()
            elif kind == "step_finish":
                steps += 1
                tokens = part.get("tokens") or {}
                cache = tokens.get("cache") or {}
                tokens_in += int(tokens.get("input") or 0) + int(cache.get("read") or 0) + int(cache.get("write") or 0)
                tokens_out += int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0)
                cost += float(part.get("cost") or 0.0)
            elif kind == "tool_use":
                tools.append(part.get("tool"))
            elif kind == "error":
                failure = event.get("error") or {}
                data = failure.get("data") or {}
                error = f"opencode: {data.get('message') or failure.get('name') or 'error'}"
        if not events and error is None:
            error = "opencode printed no events"
        return Parsed(error is None, final_message=final, turns=steps if events else None,
                      tokens_in=tokens_in if steps else None, tokens_out=tokens_out if steps else None,
                      cost_usd=cost if steps else None, session_id=session_id, error=error,
                      details={"tools": tools})
