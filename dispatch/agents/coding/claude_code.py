"""``claude_code``: Anthropic's Claude Code in print mode, one task per run.

Config (TOML)::

    [agents.claude]
    kind = "claude_code"
    model = "sonnet"                    # --model
    max_turns = 30                      # --max-turns
    allowed_tools = ["Read", "Edit", "Write", "Bash(git diff *)"]   # --allowedTools
    disallowed_tools = ["WebFetch"]     # --disallowedTools
    permission_mode = "acceptEdits"     # --permission-mode (print mode cannot ask)
    api_key_env = "MY_ANTHROPIC_KEY"    # handed over as ANTHROPIC_API_KEY
    base_url = "http://127.0.0.1:4000"  # ANTHROPIC_BASE_URL (a proxy or gateway)
    env_pass = ["ANTHROPIC_*"]

Runs ``claude -p --output-format json`` with the prompt on stdin (no argv size
limit) and reads its one result object: ``result`` (final message),
``is_error``/``subtype``, ``num_turns``, ``usage``, ``total_cost_usd`` and
``session_id``.  Flags and variables checked against Claude Code 2.1.197
(``claude --help``; ``--max-turns`` is accepted though not listed).
"""
from __future__ import annotations

from typing import Optional

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed, flag_list
from dispatch.agents.process import ProcessResult
from dispatch.agents.shell import parse_json_output

# API statuses worth a retry: rate limit, overload, server errors.
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504, 529}


class ClaudeCodeOptions(CodingOptions):
    permission_mode: str = "acceptEdits"
    disallowed_tools: Optional[list[str]] = None


@AGENTS.register("claude_code")
class ClaudeCodeAgent(CodingAgent):
    Options = ClaudeCodeOptions
    program = "claude"
    quiet_env = {"DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
                 "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                 "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: ClaudeCodeOptions = self.options
        argv = [self.executable(), "-p", "--output-format", "json", "--permission-mode", opts.permission_mode]
        if opts.model:
            argv += ["--model", opts.model]
        if opts.max_turns:
            argv += ["--max-turns", str(opts.max_turns)]
        # ``--allowedTools`` takes a variadic list: one comma-joined argument keeps it from eating later flags.
        argv += flag_list("--allowedTools", opts.allowed_tools)
        argv += flag_list("--disallowedTools", opts.disallowed_tools)
        return Launch(argv, stdin=prompt.encode())

    def key_env(self, key: str) -> dict[str, str]:
        return {"ANTHROPIC_API_KEY": key}

    def base_url_env(self, url: str) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": url}

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        text = result.stdout.text.strip()
        if not text:
            return Parsed(False, error="claude printed no result")
        data = parse_json_output(text)  # with stream-json in extra_args, the last line is the result
        if not isinstance(data, dict):
            return Parsed(False, error="claude's result is not a JSON object")
        usage = data.get("usage") or {}
        tokens_in = None
        if usage:
            tokens_in = sum(int(usage.get(k) or 0) for k in
                            ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        failed = bool(data.get("is_error")) or data.get("subtype") not in (None, "success")
        status = data.get("api_error_status")
        error = None
        if failed:
            subtype = data.get("subtype")
            reason = [subtype] if subtype and subtype != "success" else []
            reason += [str(data["result"])] if data.get("result") else []
            error = "claude: " + (": ".join(reason) or "error")
        details = {k: data[k] for k in ("subtype", "stop_reason", "terminal_reason", "permission_denials",
                                        "duration_api_ms", "modelUsage") if k in data}
        return Parsed(not failed, final_message=data.get("result"), turns=data.get("num_turns"),
                      tokens_in=tokens_in, tokens_out=usage.get("output_tokens"),
                      cost_usd=data.get("total_cost_usd"), session_id=data.get("session_id"), error=error,
                      transient=status in TRANSIENT_STATUSES or _unreachable(data), details=details)


def _unreachable(data: dict) -> bool:
    """The API could not be reached at all (refused, reset, DNS): worth a retry, maybe on another worker."""
    return bool(data.get("is_error")) and str(data.get("result") or "").startswith("API Error: Unable to connect")
