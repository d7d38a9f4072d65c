"""The shared provider client against a real local server speaking both protocols."""
from __future__ import annotations

import json

import httpx
import pytest
from llm_server import ANTHROPIC_PATH, OPENAI_PATH, Reply, answer_text, error_body, llm_server  # noqa: F401

from dispatch.errors import ConfigError
from dispatch.common.providers import ANTHROPIC_VERSION, ProviderError, make_client
from dispatch.common.text import extract_json

SECRET = "sk-test-very-secret-4711"
SCHEMA = {"title": "answer", "type": "object", "properties": {"ok": {"type": "boolean"}}}


def openai(server, **options):
    return make_client({"provider": "openai", "model": "gpt-test", "base_url": server.openai_base_url, **options})


def anthropic(server, **options):
    return make_client({"provider": "anthropic", "model": "claude-test", "base_url": server.anthropic_base_url,
                        **options})


# ------------------------------------------------------------------ OpenAI
def test_openai_request_and_reply(llm_server, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", SECRET)
    llm_server.openai(answer_text("hello there", usage=(12, 3)))
    client = openai(llm_server, api_key_env="TEST_OPENAI_KEY", temperature=0.3, max_tokens=50)
    reply = client.complete("be brief", [{"role": "user", "content": "hi"}])
    assert reply.text == "hello there"
    assert reply.usage == {"input_tokens": 12, "output_tokens": 3}
    assert reply.latency_ms > 0 and reply.raw["object"] == "chat.completion"
    [request] = llm_server.requests
    assert request.path == OPENAI_PATH
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body["model"] == "gpt-test"
    assert request.body["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hi"}]
    assert request.body["temperature"] == 0.3 and request.body["max_tokens"] == 50
    assert "response_format" not in request.body
    assert SECRET not in repr(client) and SECRET not in json.dumps(reply.raw)


def test_openai_json_schema_modes(llm_server):
    llm_server.openai(answer_text("{}"), answer_text("{}"), answer_text("{}"))
    openai(llm_server).complete("sys", [{"role": "user", "content": "x"}], json_schema=SCHEMA)
    openai(llm_server, json_mode="object").complete("sys", [{"role": "user", "content": "x"}], json_schema=SCHEMA)
    openai(llm_server, json_mode="off").complete("sys", [{"role": "user", "content": "x"}], json_schema=SCHEMA)
    first, second, third = (r.body for r in llm_server.requests)
    assert first["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    assert second["response_format"] == {"type": "json_object"}
    assert "response_format" not in third
    # The schema is stated in the system prompt too, for servers that ignore response_format.
    assert '"ok"' in third["messages"][0]["content"]


def test_no_key_sent_when_none_configured(llm_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm_server.openai(answer_text("ok"))
    openai(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert "authorization" not in llm_server.requests[0].headers
    assert llm_server.requests[0].body["messages"] == [{"role": "user", "content": "x"}]


def test_default_key_variable_is_used_when_set(llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    llm_server.openai(answer_text("ok"))
    openai(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_named_key_variable_missing_is_a_clear_error(llm_server, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ProviderError, match="environment variable NOT_SET_ANYWHERE is not set") as info:
        openai(llm_server, api_key_env="NOT_SET_ANYWHERE").complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is False
    assert llm_server.requests == []


# --------------------------------------------------------------- Anthropic
def test_anthropic_request_and_reply(llm_server, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", SECRET)
    llm_server.anthropic(answer_text("bonjour", usage=(20, 4)))
    client = anthropic(llm_server, api_key_env="TEST_ANTHROPIC_KEY", temperature=0.0)
    reply = client.complete("system text", [{"role": "user", "content": "salut"}], json_schema=SCHEMA)
    assert reply.text == "bonjour"
    assert reply.usage == {"input_tokens": 20, "output_tokens": 4}
    [request] = llm_server.requests
    assert request.path == ANTHROPIC_PATH
    assert request.headers["x-api-key"] == SECRET
    assert request.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in request.headers
    assert request.body["model"] == "claude-test"
    assert request.body["max_tokens"] == 1024
    assert request.body["temperature"] == 0.0
    assert request.body["system"].startswith("system text") and '"ok"' in request.body["system"]
    assert request.body["messages"] == [{"role": "user", "content": "salut"}]


def test_anthropic_text_blocks_are_joined(llm_server):
    llm_server.anthropic(Reply(body={"content": [{"type": "thinking", "thinking": "hmm"},
                                                 {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
    assert anthropic(llm_server).complete("", [{"role": "user", "content": "x"}]).text == "ab"


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("path,client", [(OPENAI_PATH, openai), (ANTHROPIC_PATH, anthropic)])
def test_server_error_is_transient_with_provider_message(llm_server, path, client):
    llm_server.script(path, error_body(path, 500, "overloaded, try later"))
    with pytest.raises(ProviderError) as info:
        client(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert info.value.status == 500 and info.value.transient is True
    assert "HTTP 500" in str(info.value) and "overloaded, try later" in str(info.value)


def test_rate_limit_is_transient_with_retry_after(llm_server):
    llm_server.openai(Reply(body={"error": {"message": "slow down"}}, status=429, headers={"retry-after": "7"}))
    with pytest.raises(ProviderError) as info:
        openai(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is True and info.value.retry_after == 7.0


def test_auth_error_is_permanent_and_redacts_the_key(llm_server, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", SECRET)
    llm_server.openai(Reply(body={"error": {"message": f"Incorrect API key provided: {SECRET}"}}, status=401))
    with pytest.raises(ProviderError) as info:
        openai(llm_server, api_key_env="TEST_OPENAI_KEY").complete("", [{"role": "user", "content": "x"}])
    assert info.value.status == 401 and info.value.transient is False
    assert SECRET not in str(info.value) and "***" in str(info.value)


def test_timeout_is_transient(llm_server):
    llm_server.openai(Reply(text="too late", delay_s=3.0))
    with pytest.raises(ProviderError, match=r"timed out after 0\.3s") as info:
        openai(llm_server, timeout_s=0.3).complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is True and info.value.status is None


def test_dropped_connection_is_transient(llm_server):
    llm_server.openai(Reply(disconnect=True))
    with pytest.raises(ProviderError, match="connection failed") as info:
        openai(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is True


def test_refused_connection_is_transient():
    from conftest import free_port
    client = make_client({"provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
    with pytest.raises(ProviderError, match="connection failed") as info:
        client.complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is True


def test_body_that_is_not_json_is_permanent(llm_server):
    llm_server.openai(Reply(raw="<html>gateway</html>"))
    with pytest.raises(ProviderError, match="not JSON") as info:
        openai(llm_server).complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient is False and info.value.status == 200


def test_body_without_a_message_is_an_error(llm_server):
    llm_server.openai(Reply(body={"choices": []}))
    with pytest.raises(ProviderError, match="no choices"):
        openai(llm_server).complete("", [{"role": "user", "content": "x"}])


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("options,message", [
    ({"provider": "cohere", "model": "m"}, "provider: must be one of"),
    ({"provider": "openai"}, "model: a model name is required"),
    ({"provider": "openai", "model": "m", "base_url": "ftp://x"}, "base_url"),
    ({"provider": "openai", "model": "m", "timeout_s": 0}, "timeout_s"),
    ({"provider": "openai", "model": "m", "temperature": "hot"}, "temperature"),
    ({"provider": "anthropic", "model": "m", "max_tokens": -1}, "max_tokens"),
    ({"provider": "openai", "model": "m", "json_mode": "xml"}, "json_mode"),
    ({"provider": "openai", "model": "m", "headers": {"Authorization": "Bearer x"}}, "credentials"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_client(options)


def test_injected_transport():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "mocked"}}]})

    client = make_client({"provider": "openai", "model": "m", "base_url": "http://models.invalid/v1"},
                         transport=httpx.MockTransport(handler))
    assert client.complete("", [{"role": "user", "content": "x"}]).text == "mocked"
    assert str(seen[0].url) == "http://models.invalid/v1/chat/completions"


# ------------------------------------------------------------ extract_json
@pytest.mark.parametrize("text", [
    '{"a": 1}',
    '```json\n{"a": 1}\n```',
    '```\n{"a": 1}\n```',
    'Here is my assessment:\n\n{"a": 1}\n\nLet me know if you need more.',
    'Sure! ```json\n{"a": 1}\n``` Hope this helps.',
    '<think>maybe {"a": 2}?</think>{"a": 1}',
    'The set {x} is odd, but {"a": 1} is the answer',
])
def test_extract_json_finds_the_object(text):
    assert extract_json(text) == {"a": 1}


@pytest.mark.parametrize("text", ["", "   ", "no json here", '{"a": 1', "[1, 2, 3]"])
def test_extract_json_refuses_what_is_not_an_object(text):
    with pytest.raises(ValueError):
        extract_json(text)


def test_a_header_references_a_secret_resolved_at_call_time_and_never_kept(llm_server, monkeypatch):
    llm_server.openai(answer_text("ok"))
    client = openai(llm_server, headers={"X-Api-Token": "${GATEWAY_TOKEN}", "X-Team": "core"})
    assert "${GATEWAY_TOKEN}" in repr(client.options.headers)  # the reference is what is kept
    monkeypatch.setenv("GATEWAY_TOKEN", "gw-8f2e1c")
    client.complete("", [{"role": "user", "content": "x"}])
    assert llm_server.requests[-1].headers["x-api-token"] == "gw-8f2e1c"
    monkeypatch.delenv("GATEWAY_TOKEN")
    with pytest.raises(ProviderError, match="GATEWAY_TOKEN is not set on this worker"):
        client.complete("", [{"role": "user", "content": "x"}])
    with pytest.raises(ConfigError, match="headers"):
        openai(llm_server, headers={"Authorization": "Bearer sk-live-1234567890abcdef"})
