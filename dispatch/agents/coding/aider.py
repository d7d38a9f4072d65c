"""``aider``: aider in one-shot mode (``--message-file``), edits committed by aider itself.

Config (TOML)::

    [agents.aider]
    kind = "aider"
    model = "openai/gpt-4o"             # --model (a litellm model name)
    weak_model = "openai/gpt-4o-mini"   # --weak-model (writes the commit messages)
    edit_format = "diff"                # --edit-format
    files = ["src/calc.py"]             # files added to the chat (relative to the checkout)
    read = ["docs/STYLE.md"]            # read-only files
    model_metadata_file = "/etc/dispatch/models.json"   # --model-metadata-file (context size, prices)
    base_url = "http://127.0.0.1:8080/v1"   # OPENAI_API_BASE
    api_key_env = "MY_OPENAI_KEY"           # handed over as OPENAI_API_KEY

aider commits each edit in a git checkout; that is expected (all commits since
the task's start commit are its change).  Its chat and input histories go to a
scratch directory and its repo-map cache (``.aider.tags.cache.v4``) is removed
after the run, so neither ends up in the task's change; ``--no-gitignore``
keeps it from editing ``.gitignore``.  Analytics and the update check are off;
``LITELLM_LOCAL_MODEL_COST_MAP`` keeps litellm from downloading its price list.
aider prints no JSON: tokens and cost come from its local analytics log
(``--analytics-log``, written only to the scratch file, nothing is sent), the
final message is its answer text, commits are read from its ``Commit <sha>``
lines.  ``max_turns`` and ``allowed_tools`` do not exist in aider and are
refused.  Flags checked against aider 0.86.2 (``aider --help``).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

from pydantic import model_validator

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed
from dispatch.agents.process import ProcessResult

ANALYTICS_LOG = "analytics.jsonl"
COMMIT_LINE = re.compile(r"^Commit ([0-9a-f]{7,40}) (.*)$", re.MULTILINE)
# Lines aider prints around the model's answer: not part of the final message.
BANNER = re.compile(r"^(Aider v|Main model:|Weak model:|Editor model:|Git repo:|Repo-map:|Added .* to the chat|"
                    r"Tokens: |Applied edit to |Commit [0-9a-f]{7,40} |Cost: |Warning|You can skip this check|"
                    r"https://aider.chat/|Model .* has hit a token limit|Use /help)")


class AiderOptions(CodingOptions):
    weak_model: Optional[str] = None
    edit_format: Optional[str] = None
    files: list[str] = []
    read: list[str] = []
    model_metadata_file: Optional[str] = None
    auto_commits: bool = True

    @model_validator(mode="after")
    def _supported(self) -> "AiderOptions":
        if self.max_turns is not None:
            raise ValueError("max_turns: aider has no turn limit (use timeout_s)")
        if self.allowed_tools is not None:
            raise ValueError("allowed_tools: aider has no tools to allow")
        for path in self.files + self.read:
            if os.path.isabs(path) or ".." in path.split("/"):
                raise ValueError(f"files/read: '{path}' must be relative to the checkout")
        return self


@AGENTS.register("aider")
class AiderAgent(CodingAgent):
    Options = AiderOptions
    program = "aider"
    quiet_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "AIDER_CHECK_UPDATE": "false",
                 "AIDER_ANALYTICS": "false"}
    litter = (".aider.tags.cache.v4", ".aider.chat.history.md", ".aider.input.history", ".aider.llm.history")

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: AiderOptions = self.options
        message_file = os.path.join(scratch, "message.md")
        with open(message_file, "w", encoding="utf-8") as fh:
            fh.write(prompt)
        argv = [self.executable(), "--message-file", message_file, "--yes-always",
                "--no-check-update", "--no-analytics", "--analytics-log", os.path.join(scratch, ANALYTICS_LOG),
                "--no-show-release-notes", "--no-pretty", "--no-fancy-input", "--no-gitignore",
                "--no-detect-urls", "--chat-history-file", os.path.join(scratch, "chat.md"),
                "--input-history-file", os.path.join(scratch, "input.history")]
        if not opts.auto_commits:
            argv.append("--no-auto-commits")
        for flag, value in (("--model", opts.model), ("--weak-model", opts.weak_model),
                            ("--edit-format", opts.edit_format),
                            ("--model-metadata-file", opts.model_metadata_file)):
            if value:
                argv += [flag, value]
        for path in opts.read:
            argv += ["--read", path]
        return Launch(argv + ["--", *opts.files] if opts.files else argv)

    def key_env(self, key: str) -> dict[str, str]:
        return {"OPENAI_API_KEY": key}

    def base_url_env(self, url: str) -> dict[str, str]:
        return {"OPENAI_API_BASE": url}

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        sends = [e.get("properties") or {} for e in _read_events(os.path.join(scratch, ANALYTICS_LOG))
                 if e.get("event") == "message_send"]
        exceptions = [e.get("properties") or {} for e in _read_events(os.path.join(scratch, ANALYTICS_LOG))
                      if e.get("event") == "message_send_exception"]
        commits = [{"sha": sha, "message": message.strip()} for sha, message in COMMIT_LINE.findall(result.stdout.text)]
        error = None
        if exceptions:
            error = f"aider: {exceptions[-1].get('exception', 'model request failed')}"
        elif not sends:
            error = "aider sent no message to the model"
        cost: Optional[float] = None
        if sends and any("total_cost" in s for s in sends):
            cost = float(sends[-1].get("total_cost") or 0.0)
        details: dict[str, Any] = {"commits": commits}
        if sends:
            details["edit_format"] = sends[-1].get("edit_format")
        return Parsed(error is None, final_message=_answer(result.stdout.text), turns=len(sends),
                      tokens_in=sum(int(s.get("prompt_tokens") or 0) for s in sends) if sends else None,
                      tokens_out=sum(int(s.get("completion_tokens") or 0) for s in sends) if sends else None,
                      cost_usd=cost, error=error, transient=_transient(error), details=details)


def _read_events(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    events = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                events.append(value)
    return events


def _answer(stdout: str) -> Optional[str]:
    """The model's answer as aider printed it: stdout without aider's own status lines."""
    lines = [line for line in stdout.splitlines() if not BANNER.match(line.strip())]
    text = "\n".join(lines).strip()
    return text or None


def _transient(error: Optional[str]) -> bool:
    text = (error or "").lower()
    return any(mark in text for mark in ("ratelimit", "rate limit", "429", "serviceunavailable", "timeout",
                                         "apiconnectionerror", "internalservererror"))
