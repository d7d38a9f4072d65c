"""``mini_swe_agent``: mini-swe-agent's ``mini`` CLI, unattended (yolo, exit when done).

Config (TOML)::

    [agents.mini]
    kind = "mini_swe_agent"
    model = "openai/gpt-4o"             # -m (a litellm model name)
    max_turns = 40                      # agent.step_limit
    cost_limit = 2.0                    # -l (dollars; 0 = no limit)
    config = ["mini.yaml"]              # -c specs; the built-in default unless given
    model_registry = "/etc/dispatch/litellm-models.json"   # LITELLM_MODEL_REGISTRY_PATH (prices)
    base_url = "http://127.0.0.1:8080/v1"   # OPENAI_API_BASE (litellm's openai/ models)
    api_key_env = "MY_OPENAI_KEY"           # handed over as OPENAI_API_KEY

The task text goes in a YAML config file (``run.task``), not on the command
line, so a long prompt cannot hit the argument size limit.  The trajectory file
(``-o``) is read back: ``info.exit_status`` ("Submitted" is success),
``info.model_stats`` (calls, cost), the per-call usage of each assistant
message (tokens) and the last assistant message (final message).  A model with
no price in litellm would abort the run, so ``MSWEA_COST_TRACKING`` defaults to
``ignore_errors`` (cost then reads 0 for that model).  First-run setup and the
startup banner are off.  ``allowed_tools`` does not exist (mini has one bash
tool) and is refused.  Checked against mini-swe-agent 2.4.6 (``mini --help``
and its ``run/mini.py``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from pydantic import Field, model_validator

from dispatch.agents.base import AGENTS, AgentInvocation
from dispatch.agents.coding.base import CodingAgent, CodingOptions, Launch, Parsed
from dispatch.agents.process import ProcessResult

TRAJECTORY = "trajectory.json"
DEFAULT_CONFIG = "mini.yaml"


class MiniSweAgentOptions(CodingOptions):
    cost_limit: Optional[float] = Field(default=None, ge=0)
    config: list[str] = Field(default_factory=lambda: [DEFAULT_CONFIG])
    model_registry: Optional[str] = None

    @model_validator(mode="after")
    def _supported(self) -> "MiniSweAgentOptions":
        if self.allowed_tools is not None:
            raise ValueError("allowed_tools: mini-swe-agent has a single bash tool")
        return self


@AGENTS.register("mini_swe_agent")
class MiniSweAgent(CodingAgent):
    Options = MiniSweAgentOptions
    program = "mini"
    quiet_env = {"MSWEA_CONFIGURED": "true", "MSWEA_SILENT_STARTUP": "1", "MSWEA_COST_TRACKING": "ignore_errors",
                 "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def launch(self, inv: AgentInvocation, prompt: str, scratch: str) -> Launch:
        opts: MiniSweAgentOptions = self.options
        task_file = os.path.join(scratch, "task.yaml")
        run_config: dict[str, Any] = {"run": {"task": prompt}}
        if opts.max_turns:
            run_config["agent"] = {"step_limit": opts.max_turns}
        with open(task_file, "w", encoding="utf-8") as fh:
            json.dump(run_config, fh)  # JSON is YAML
        argv = [self.executable(), "--yolo", "--exit-immediately", "-o", os.path.join(scratch, TRAJECTORY)]
        for spec in opts.config:
            argv += ["-c", spec]
        argv += ["-c", task_file]
        if opts.model:
            argv += ["-m", opts.model]
        if opts.cost_limit is not None:
            argv += ["-l", f"{opts.cost_limit:g}"]
        env = {"LITELLM_MODEL_REGISTRY_PATH": opts.model_registry} if opts.model_registry else {}
        return Launch(argv, env=env)

    def key_env(self, key: str) -> dict[str, str]:
        return {"OPENAI_API_KEY": key}

    def base_url_env(self, url: str) -> dict[str, str]:
        return {"OPENAI_API_BASE": url}

    def parse(self, result: ProcessResult, scratch: str) -> Parsed:
        path = os.path.join(scratch, TRAJECTORY)
        if not os.path.isfile(path):
            return Parsed(False, error="mini wrote no trajectory")
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        info = data.get("info") or {}
        stats = info.get("model_stats") or {}
        messages = [m for m in data.get("messages") or [] if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"]
        usages = [((m.get("extra") or {}).get("response") or {}).get("usage") or {} for m in assistant]
        status = info.get("exit_status") or ""
        final = next((m.get("content") for m in reversed(assistant) if m.get("content")), None)
        error = None if status == "Submitted" else f"mini: {status or 'did not finish'}"
        exit_message = next((m.get("content") for m in reversed(messages) if m.get("role") == "exit"), None)
        if error and exit_message:
            error += f": {exit_message}"
        return Parsed(error is None, final_message=final, turns=stats.get("api_calls"),
                      tokens_in=sum(int(u.get("prompt_tokens") or 0) for u in usages) if usages else None,
                      tokens_out=sum(int(u.get("completion_tokens") or 0) for u in usages) if usages else None,
                      cost_usd=stats.get("instance_cost"), error=error,
                      details={"exit_status": status, "submission": info.get("submission"),
                               "mini_version": info.get("mini_version")})
