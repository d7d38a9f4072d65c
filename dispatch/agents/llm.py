"""``llm``: one chat completion per task through ``dispatch.common.providers``.

Config (TOML)::

    [agents.writer]
    kind = "llm"
    provider = "openai"            # or "anthropic"
    model = "gpt-4o-mini"
    base_url = "http://localhost:11434/v1"   # optional; provider default otherwise
    api_key_env = "OPENAI_API_KEY"           # the key itself never goes in the file
    temperature = 0.2
    max_tokens = 2000
    system_prompt = "You are a senior Python engineer."
    output_schema = { type = "object", required = ["code"], properties = { code = { type = "string" } } }
    schema_repairs = 1             # re-asks allowed after an answer that breaks the schema

The user message is the prompt from ``build_prompt`` (request, task, input data,
filtered context, dependencies' outputs), so what the model saw is in the saved
state.  With ``output_schema`` the client asks for JSON in the strongest form the
endpoint accepts (``json_mode = "auto"``, negotiated once per endpoint and process
by ``common.providers``; the output's ``json_mode`` says which), the answer is parsed
(code fences and surrounding prose tolerated) and checked by ``schema_check``;
an answer that does not conform is sent back once with the faults listed, since
models usually fix a named mistake, and fails the task if it still does not.

Every call's tokens (the provider's ``usage``) are the outcome's ``usage``,
priced from ``[prices."<model>"]``; with a per-task ``max_cost_usd`` no repair
is asked once the task's spend has reached it.

Provider errors the client marks transient (429, 5xx, timeouts, connection
resets) become transient outcomes so the runner retries with backoff; others
(401, 400, a missing key variable) fail at once.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from dispatch.config import ComponentConfig
from dispatch.errors import ConfigError
from dispatch.common.providers import ProviderError, make_client
from dispatch.common.spend import call_usage, total
from dispatch.common.text import extract_json_value
from dispatch.agents.base import AGENTS, Agent, AgentInvocation, AgentOptions, AgentOutcome
from dispatch.agents.schema_check import check_schema, validate

DEFAULT_SYSTEM_PROMPT = (
    "You are an agent carrying out one task of a larger plan. Do exactly the task described, "
    "using the context and the outputs of earlier tasks you are given, and answer with the result only."
)
CLIENT_KEYS = ("provider", "model", "base_url", "api_key_env", "temperature", "max_tokens", "json_mode", "headers",
               "provider_limit", "provider_limits")


class LlmOptions(AgentOptions):
    # Passed through to ``make_client``, which validates them and owns their meaning.
    provider: Any = None
    model: Any = None
    base_url: Any = None
    api_key_env: Any = None
    temperature: Any = None
    max_tokens: Any = None
    json_mode: Any = None
    headers: Any = None
    provider_limit: Any = None  # the [providers.<name>] its calls count against (README)
    provider_limits: Any = None  # that table, put here by DispatchConfig
    # The agent's own.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    output_schema: Optional[dict[str, Any]] = None
    schema_repairs: int = Field(default=1, ge=0, le=5)


@AGENTS.register("llm")
class LlmAgent(Agent):
    edits_files = False  # answers only: no checkout needed
    Options = LlmOptions

    def __init__(self, name: str, config: ComponentConfig) -> None:
        super().__init__(name, config)
        opts: LlmOptions = self.options
        where = f"agent '{name}' (llm)"
        self.client_options = {key: getattr(opts, key) for key in CLIENT_KEYS if getattr(opts, key) is not None}
        try:
            make_client(self.client_options).close()  # validates provider, model, URL... at planning time
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if opts.output_schema is not None:
            check_schema(opts.output_schema, f"{where}: output_schema")

    def run(self, inv: AgentInvocation) -> AgentOutcome:
        opts: LlmOptions = self.options
        schema = opts.output_schema
        client = make_client({**self.client_options, "timeout_s": opts.timeout_s or inv.timeout_s})
        messages: list[dict[str, str]] = [{"role": "user", "content": inv.prompt}]
        usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        calls = []  # one Usage per call, priced
        model = str(opts.model) if opts.model is not None else None
        latency_ms = 0.0
        try:
            for repair in range((opts.schema_repairs if schema is not None else 0) + 1):
                spent = total(calls)
                if repair and inv.max_cost_usd is not None and (spent.cost_usd or 0) >= inv.max_cost_usd:
                    return _spent(AgentOutcome.fail(
                        f"answer does not match output_schema, and the task's cost cap (max_cost_usd "
                        f"{inv.max_cost_usd:g}) is spent: no repair asked", output), calls)
                try:
                    reply = client.complete(opts.system_prompt, messages, json_schema=schema)
                except ProviderError as exc:
                    return _spent(AgentOutcome.fail(str(exc), transient=exc.transient, retry_after_s=exc.retry_after),
                                  calls)
                latency_ms += reply.latency_ms
                calls.append(call_usage(model, reply.input_tokens, reply.output_tokens, inv.prices))
                for key in usage:
                    usage[key] += reply.usage.get(key) or 0
                output = {"text": reply.text, "model": str(opts.model), "provider": str(opts.provider),
                          "usage": usage, "latency_ms": round(latency_ms, 1), "repairs": repair}
                if schema is not None:
                    output["json_mode"] = reply.json_mode
                if schema is None:
                    if not reply.text.strip():
                        return _spent(AgentOutcome.fail("model returned an empty answer", output), calls)
                    return _spent(AgentOutcome.ok(output), calls)
                faults = _faults(reply.text, schema, output)
                if not faults:
                    return _spent(AgentOutcome.ok(output), calls)
                messages += [{"role": "assistant", "content": reply.text},
                             {"role": "user", "content": _repair_request(faults)}]
        finally:
            client.close()
        return _spent(AgentOutcome.fail("answer does not match output_schema: " + "; ".join(faults), output), calls)


def _spent(outcome: AgentOutcome, calls: list) -> AgentOutcome:
    """The outcome with the usage of every call made for it (nothing when no call got an answer)."""
    outcome.usage = total(calls) if calls else None
    return outcome


def _faults(text: str, schema: dict, output: dict[str, Any]) -> list[str]:
    """Parse and check an answer; on success the value is stored in ``output['json']``."""
    try:
        value = extract_json_value(text)
    except ValueError as exc:
        return [f"not JSON ({exc})"]
    errors = validate(value, schema)
    if not errors:
        output["json"] = value
    return errors


def _repair_request(faults: list[str]) -> str:
    listed = "\n".join(f"- {fault}" for fault in faults)
    return ("Your answer does not match the required JSON Schema:\n"
            f"{listed}\n"
            "Answer again with only the corrected JSON, no other text.")
