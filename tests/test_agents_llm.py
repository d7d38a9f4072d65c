"""The ``llm`` agent against a real local HTTP server speaking the OpenAI and
Anthropic protocols, and the small JSON Schema checker behind ``output_schema``."""
from __future__ import annotations

import json
import socket

import pytest
from llm_server import ANTHROPIC_PATH, OPENAI_PATH, FakeLLMServer, Reply, answer_text, error_body

from dispatch.agents import AgentInvocation, make_agent, run_agent
from dispatch.agents.schema_check import check_schema, validate
from dispatch.common.text import extract_json_value
from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import ContextItem, TaskContext, TaskSpec

SCHEMA = {"type": "object", "required": ["code", "score"], "additionalProperties": False,
          "properties": {"code": {"type": "string", "minLength": 1},
                         "score": {"type": "integer", "minimum": 0, "maximum": 100},
                         "tags": {"type": "array", "items": {"type": "string"}}}}


@pytest.fixture(scope="module")
def shared_server():
    with FakeLLMServer() as server:  # one per module: stopping a server costs half a second
        yield server


@pytest.fixture
def llm_server(shared_server):
    """The shared server with a clean record; every scripted reply must be used."""
    shared_server.requests.clear()
    yield shared_server
    assert shared_server.pending(OPENAI_PATH) == 0 and shared_server.pending(ANTHROPIC_PATH) == 0


def llm(server, provider="openai", **options):
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    entry = {"kind": "llm", "provider": provider, "model": "test-model", "base_url": base_url, **options}
    return make_agent("writer", DispatchConfig.model_validate({"agents": {"writer": entry}}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(timeout_s=10.0) -> AgentInvocation:
    task = TaskSpec(task_id="gen", agent="writer", description="Write the DB writer", input_data={"table": "users"})
    context = TaskContext(task_id="gen", items=[ContextItem(id="c", source="src/db.py", content="def write(): ...")])
    return AgentInvocation(task=task, context=context, dependency_outputs={"schema": {"cols": ["id"]}},
                           user_prompt="Generate nodes", workspace_path=".", run_id="r1", attempt=1,
                           timeout_s=timeout_s)


# ------------------------------------------------------------ plain text
def test_openai_completion(llm_server):
    llm_server.openai(answer_text("def write(row): db.insert(row)"))
    inv = invoke()
    outcome = run_agent(llm(llm_server, system_prompt="You write Python.", temperature=0.1, max_tokens=500), inv)
    assert outcome.success, outcome.error
    out = outcome.output
    assert out["text"] == "def write(row): db.insert(row)"
    assert out["model"] == "test-model" and out["provider"] == "openai" and out["repairs"] == 0
    assert out["usage"] == {"input_tokens": 11, "output_tokens": 7} and out["latency_ms"] > 0
    body = llm_server.requests_to(OPENAI_PATH)[0].body
    assert body["model"] == "test-model" and body["temperature"] == 0.1 and body["max_tokens"] == 500
    assert body["messages"] == [{"role": "system", "content": "You write Python."},
                                {"role": "user", "content": inv.prompt}]
    assert "def write(): ..." in inv.prompt and '"cols"' in inv.prompt and "Generate nodes" in inv.prompt
    assert "response_format" not in body


def test_anthropic_completion_with_key_from_environment(llm_server, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant-secret")
    llm_server.anthropic(answer_text("done"))
    inv = invoke()
    outcome = run_agent(llm(llm_server, "anthropic", api_key_env="TEST_ANTHROPIC_KEY", system_prompt="SYS"), inv)
    assert outcome.success and outcome.output["text"] == "done"
    request = llm_server.requests_to(ANTHROPIC_PATH)[0]
    assert request.headers["x-api-key"] == "sk-ant-secret" and "anthropic-version" in request.headers
    assert request.body["system"] == "SYS"
    assert request.body["messages"] == [{"role": "user", "content": inv.prompt}]
    assert "sk-ant-secret" not in json.dumps(outcome.output)


def test_missing_key_variable_fails_without_retry(llm_server, monkeypatch):
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    outcome = run_agent(llm(llm_server, api_key_env="TEST_UNSET_KEY"), invoke())
    assert not outcome.success and not outcome.transient and "TEST_UNSET_KEY is not set" in outcome.error
    assert llm_server.requests == []


def test_empty_answer_fails(llm_server):
    llm_server.openai(answer_text("   "))
    outcome = run_agent(llm(llm_server), invoke())
    assert not outcome.success and outcome.error == "model returned an empty answer"


# ------------------------------------------------------ structured output
def test_schema_valid_answer_in_a_code_fence(llm_server):
    llm_server.openai(answer_text('Here it is:\n```json\n{"code": "x = 1", "score": 90, "tags": ["db"]}\n```'))
    outcome = run_agent(llm(llm_server, output_schema=SCHEMA), invoke())
    assert outcome.success, outcome.error
    assert outcome.output["json"] == {"code": "x = 1", "score": 90, "tags": ["db"]}
    body = llm_server.requests_to(OPENAI_PATH)[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_schema_invalid_answer_is_sent_back_once_and_repaired(llm_server):
    llm_server.anthropic(answer_text('{"code": "x = 1", "score": "high"}'),
                         answer_text('{"code": "x = 1", "score": 80}'))
    outcome = run_agent(llm(llm_server, "anthropic", output_schema=SCHEMA), invoke())
    assert outcome.success, outcome.error
    assert outcome.output["json"] == {"code": "x = 1", "score": 80} and outcome.output["repairs"] == 1
    assert outcome.output["usage"] == {"input_tokens": 22, "output_tokens": 14}
    second = llm_server.requests_to(ANTHROPIC_PATH)[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == '{"code": "x = 1", "score": "high"}'
    assert "$.score: expected integer, got string" in second[2]["content"]
    assert "JSON Schema" in llm_server.requests_to(ANTHROPIC_PATH)[0].body["system"]


def test_schema_invalid_answer_fails_the_task(llm_server):
    llm_server.openai(answer_text('{"code": "", "score": 120, "extra": 1}'),
                      answer_text('{"code": "", "score": 120, "extra": 1}'))
    outcome = run_agent(llm(llm_server, output_schema=SCHEMA), invoke())
    assert not outcome.success and not outcome.transient
    assert outcome.error.startswith("answer does not match output_schema: ")
    for fault in ("unexpected property 'extra'", "$.code: shorter than 1", "$.score: 120 is greater than 100"):
        assert fault in outcome.error
    assert outcome.output["text"] and "json" not in outcome.output
    assert len(llm_server.requests) == 2


def test_non_json_answer_without_repairs(llm_server):
    llm_server.openai(answer_text("I cannot do that."))
    outcome = run_agent(llm(llm_server, output_schema=SCHEMA, schema_repairs=0), invoke())
    assert not outcome.success and "not JSON" in outcome.error
    assert len(llm_server.requests) == 1


# ------------------------------------------------------------ transport
@pytest.mark.parametrize("provider, path, status, transient", [
    ("openai", OPENAI_PATH, 500, True),
    ("openai", OPENAI_PATH, 429, True),
    ("anthropic", ANTHROPIC_PATH, 529, True),
    ("openai", OPENAI_PATH, 401, False),
    ("anthropic", ANTHROPIC_PATH, 400, False),
])
def test_http_errors_are_classified(llm_server, provider, path, status, transient):
    llm_server.script(path, error_body(path, status, "upstream says no"))
    outcome = run_agent(llm(llm_server, provider), invoke())
    assert not outcome.success and outcome.transient is transient
    assert f"HTTP {status}" in outcome.error and "upstream says no" in outcome.error


def test_slow_server_times_out_as_transient(llm_server):
    llm_server.openai(Reply(text="late", delay_s=3.0))
    outcome = run_agent(llm(llm_server, timeout_s=0.3), invoke())
    assert not outcome.success and outcome.transient and "timed out after 0.3s" in outcome.error


def test_invocation_time_limit_is_the_default_client_timeout(llm_server):
    llm_server.openai(Reply(text="late", delay_s=3.0))
    outcome = run_agent(llm(llm_server), invoke(timeout_s=0.3))
    assert outcome.transient and "timed out after 0.3s" in outcome.error


def test_connection_refused_is_transient():
    entry = {"kind": "llm", "provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    agent = make_agent("w", DispatchConfig.model_validate({"agents": {"w": entry}}))
    outcome = run_agent(agent, invoke())
    assert not outcome.success and outcome.transient and "connection failed" in outcome.error


@pytest.mark.parametrize("options, message", [
    ({"model": "m"}, "provider"),
    ({"provider": "openai"}, "model"),
    ({"provider": "gemini", "model": "m"}, "provider"),
    ({"provider": "openai", "model": "m", "base_url": "ftp://x"}, "base_url"),
    ({"provider": "openai", "model": "m", "output_schema": {"type": "text"}}, "unknown type 'text'"),
    ({"provider": "openai", "model": "m", "sytem_prompt": "x"}, "sytem_prompt"),
])
def test_bad_llm_options_are_config_errors(options, message):
    with pytest.raises(ConfigError) as err:
        make_agent("w", DispatchConfig.model_validate({"agents": {"w": {"kind": "llm", **options}}}))
    assert message in str(err.value) and "agent 'w' (llm)" in str(err.value)


# ---------------------------------------------------------- answer parsing
def test_answer_parsing_accepts_bare_fenced_and_embedded_json():
    assert extract_json_value('[1, 2]') == [1, 2]
    assert extract_json_value('```\n["a"]\n```') == ["a"]
    assert extract_json_value('Sure! {"a": {"b": 1}} Hope that helps.') == {"a": {"b": 1}}
    with pytest.raises(ValueError):
        extract_json_value("no json here")


# ------------------------------------------------------------ the checker
@pytest.mark.parametrize("value, schema, errors", [
    ({"a": 1}, {"type": "object"}, []),
    (True, {"type": "integer"}, ["$: expected integer, got boolean"]),
    (3.0, {"type": "integer"}, []),
    (None, {"type": ["string", "null"]}, []),
    ("x", {"enum": ["a", "b"]}, ["$: 'x' is not one of ['a', 'b']"]),
    (True, {"enum": [1]}, ["$: True is not one of [1]"]),
    ([1, "2"], {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
     ["$: more than 1 items", "$[1]: expected integer, got string"]),
    ({"n": {"m": 5}}, {"properties": {"n": {"properties": {"m": {"exclusiveMaximum": 5}}}}},
     ["$.n.m: 5 must be less than 5"]),
    ({}, {"required": ["a"]}, ["$: missing required property 'a'"]),
    ({"x": 1}, {"additionalProperties": {"type": "string"}}, ["$.x: expected string, got integer"]),
    ("abc", {"pattern": "^a.c$"}, []),
    ("abd", {"pattern": "^a.c$"}, ["$: does not match pattern '^a.c$'"]),
    (5, {"anyOf": [{"type": "string"}, {"minimum": 10}]}, ["$: matches 0 of the anyOf alternatives"]),
    (5, {"oneOf": [{"type": "integer"}, {"minimum": 1}]}, ["$: matches 2 of the oneOf alternatives"]),
    ("v", {"allOf": [{"type": "string"}, {"const": "w"}]}, ["$: must be 'w'"]),
])
def test_validate(value, schema, errors):
    assert validate(value, schema) == errors


def test_check_schema_refuses_what_it_would_misread():
    check_schema(SCHEMA, "s")
    with pytest.raises(ConfigError, match=r"\$.properties.a.pattern"):
        check_schema({"properties": {"a": {"pattern": "("}}}, "s")
    with pytest.raises(ConfigError, match="must be a JSON Schema object"):
        check_schema(["type"], "s")
