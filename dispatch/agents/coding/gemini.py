"""``gemini``: Google's Gemini CLI in headless mode (``-p ... --output-format json``).

Config (TOML)::

    [agents.gemini]
    kind = "gemini"
    model = "gemini-2.5-pro"            # -m
    approval_mode = "auto_edit"         # --approval-mode: default | auto_edit | yolo | plan
    allowed_tools = ["run_shell_command(git)"]   # --allowed-tools (deprecated upstream in favour of policies)
    api_key_env = "MY_GEMINI_KEY"       # handed over as GEMINI_API_KEY
    base_url = "http://127.0.0.1:8080"  # GOOGLE_GEMINI_BASE_URL (a Gemini-API-compatible endpoint)

Reads the one JSON object it prints: ``response`` (final message),
``session_id``, ``error`` ({type, message, code}) and ``stats.models.*``
(``api.totalRequests`` as turns, ``tokens.prompt``/``tokens.candidates``).
Gemini reports no cost.  Telemetry off through ``GEMINI_TELEMETRY_ENABLED``; usage
statistics and auto-update are settings-file keys (``privacy.usageStatisticsEnabled``,
``general.enableAutoUpdate``) the user sets in their settings.  Verified against
the documented flags and the JSON formatter of @google/gemini-cli 0.61.0
(``gemini --help``, its bundle), not against a running model: the CLI speaks the
Gemini API, which the test server does not.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed
from dispatch.agents.process import ProcessResult
from dispatch.agents.shell import parse_json_output


class GeminiOptions(CodingOptions):
    approval_mode: Literal["default", "auto_edit", "yolo", "plan"] = "auto_edit"

    @model_validator(mode="after")
    def _supported(self) -> "GeminiOptions":
        if self.max_turns is not None:
            raise ValueError("max_turns: gemini has no such flag (set model.maxSessionTurns in its settings.json)")
        return self


@AGENTS.register("gemini")
class GeminiAgent(CodingAgent):
    Options = GeminiOptions
    program = "gemini"
    quiet_env = {"GEMINI_TELEMETRY_ENABLED": "false"}

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: GeminiOptions = self.options
        # -p is "appended to input on stdin": the prompt goes on stdin, -p only switches to headless mode.
        argv = [self.executable(), "--output-format", "json", "--approval-mode", opts.approval_mode,
                "--skip-trust", "-p", " "]
        if opts.model:
            argv += ["-m", opts.model]
        for tool in opts.allowed_tools or []:
            argv += ["--allowed-tools", tool]
        return Launch(argv, stdin=prompt.encode())

    def key_env(self, key: str) -> dict[str, str]:
        return {"GEMINI_API_KEY": key}

    def base_url_env(self, url: str) -> dict[str, str]:
        return {"GOOGLE_GEMINI_BASE_URL": url}

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        text = result.stdout.text.strip()
        if not text:
            return Parsed(False, error="gemini printed no result")
        data = parse_json_output(text)
        if not isinstance(data, dict):
            return Parsed(False, error="gemini's result is not a JSON object")
        models: dict[str, Any] = ((data.get("stats") or {}).get("models")) or {}
        requests = sum(int(((m.get("api") or {}).get("totalRequests")) or 0) for m in models.values())
        tokens = [m.get("tokens") or {} for m in models.values()]
        failure = data.get("error")
        error = None
        if failure:
            error = f"gemini: {failure.get('type', 'error')}: {failure.get('message', '')}".rstrip(": ")
        return Parsed(not failure, final_message=data.get("response"), turns=requests if models else None,
                      tokens_in=sum(int(t.get("prompt") or 0) for t in tokens) if models else None,
                      tokens_out=sum(int(t.get("candidates") or 0) for t in tokens) if models else None,
                      session_id=data.get("session_id"), error=error,
                      transient=bool(failure) and str(failure.get("code")) in {"429", "500", "503"},
                      details={"tools": (data.get("stats") or {}).get("tools"), "warnings": data.get("warnings")})
