"""``json_mode = "auto"``: structured output negotiated with servers that answer as each documents.

The local HTTP server (``llm_server``) takes each server's ``Dialect``: the
``response_format`` types it serves and the error it gives for the others
(llama-cpp-python's 500, LM Studio's 400 string error, vLLM's envelopes, a proxy
that knows no ``response_format``).  The real llama.cpp server is exercised in
``test_real_model.py``.
"""
from __future__ import annotations

import json
import random
import time

import pytest
from llm_server import (DIALECTS, OPENAI_PATH, answer_text, error_body, llm_server,  # noqa: F401
                        response_format_type, verdict)

from dispatch.common.breaker import BreakerBoard
from dispatch.common.providers import FORMS, NEGOTIATED, FormMemory, ProviderError, make_client
from dispatch.config import DispatchConfig
from dispatch.models import DispatchInput
from dispatch.quorum import MemoryCache, run_quorum

SCHEMA = {"title": "answer", "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
REQUEST = DispatchInput.model_validate({"user_prompt": "Build a postgres adapter with connection pooling", "tasks": [
    {"task_id": "pool", "agent": "llm", "description": "Implement the postgres connection pool"}]})


@pytest.fixture(autouse=True)
def fresh_memory():
    NEGOTIATED.forget()
    yield
    NEGOTIATED.forget()


def client(server, model="m", **options):
    return make_client({"provider": "openai", "model": model, "base_url": server.openai_base_url, "timeout_s": 5,
                        **options})


def ask(c):
    return c.complete("sys", [{"role": "user", "content": "x"}], json_schema=SCHEMA)


def forms_sent(server) -> list:
    return [response_format_type(r.body) for r in server.requests_to(OPENAI_PATH)]


# ------------------------------------------------------------ one per documented server
@pytest.mark.parametrize("dialect,sent,answered_with", [
    ("ollama", ["json_schema"], "schema"),
    ("vllm", ["json_schema"], "schema"),
    ("lmstudio", ["json_schema"], "schema"),
    ("llama-cpp-python", ["json_schema", "json_object"], "object_schema"),
    ("vllm-0.5", ["json_schema", "json_object"], "object_schema"),
    ("no-response-format", ["json_schema", "json_object", "json_object", None], "off"),
])
def test_auto_settles_on_the_strongest_form_each_server_takes(llm_server, dialect, sent, answered_with):
    llm_server.dialect = DIALECTS[dialect]
    llm_server.fallback = verdict("PASS", 90)
    c = client(llm_server)
    started = time.perf_counter()
    reply = ask(c)
    assert reply.json_mode == answered_with and json.loads(reply.text)["recommendation"] == "PASS"
    assert forms_sent(llm_server) == sent
    assert time.perf_counter() - started < 2.0  # refusals are answered at once: no backoff between forms
    if answered_with == "object_schema":  # llama.cpp constrains the output to the schema sent inside json_object
        assert llm_server.requests[-1].body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    # The schema is stated in the prompt whatever the form.
    assert '"required":["x"]' in llm_server.requests[-1].body["messages"][0]["content"]
    # Remembered for the endpoint: the next call (a new client, same process) asks with that form at once.
    ask(client(llm_server))
    assert forms_sent(llm_server)[len(sent):] == [sent[-1]]
    c.close()


def test_the_memory_is_per_endpoint_and_model(llm_server):
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.fallback = verdict("PASS", 90)
    ask(client(llm_server, model="small"))
    ask(client(llm_server, model="other"))  # OpenAI takes json_schema for some models only: asked afresh
    assert forms_sent(llm_server) == ["json_schema", "json_object", "json_schema", "json_object"]


def test_the_form_is_shared_through_the_cluster_cache(llm_server):
    """Another worker (its own process memory) reads what the first one negotiated from the shared cache."""
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.fallback = verdict("PASS", 90)
    shared = MemoryCache()
    first = make_client({"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url},
                        shared_cache=shared)
    assert ask(first).json_mode == "object_schema" and len(shared) == 1
    second_worker = FormMemory()
    other = make_client({"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url},
                        shared_cache=shared)
    other.memory = second_worker
    assert ask(other).json_mode == "object_schema"
    assert forms_sent(llm_server) == ["json_schema", "json_object", "json_object"]
    entry = next(iter(shared._items.values()))[1]
    assert entry["json_mode"] == "object_schema" and "api_key" not in json.dumps(entry)


def test_a_broken_shared_cache_costs_a_negotiation_not_the_call(llm_server):
    class Down:
        def get(self, key):
            raise ConnectionError("redis is down")

        def set(self, key, value, ttl_s):
            raise ConnectionError("redis is down")

    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.fallback = verdict("PASS", 90)
    c = make_client({"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url}, shared_cache=Down())
    assert ask(c).json_mode == "object_schema"


def test_a_fixed_mode_the_server_refuses_is_a_configuration_error_not_a_transient_one(llm_server):
    llm_server.dialect = DIALECTS["lmstudio"]
    with pytest.raises(ProviderError) as caught:
        ask(client(llm_server, json_mode="object"))
    err = caught.value
    assert not err.transient and err.configuration and err.config_field == "response_format"
    assert "'response_format.type' must be 'json_schema' or 'text'" in str(err)
    assert 'json_mode = "auto"' in str(err)
    assert len(llm_server.requests) == 1


def test_llama_cpp_pythons_500_naming_response_format_is_not_transient(llm_server):
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    with pytest.raises(ProviderError) as caught:
        ask(client(llm_server, json_mode="schema"))
    assert caught.value.status == 500 and not caught.value.transient and caught.value.configuration


def test_an_ordinary_500_is_still_transient(llm_server):
    llm_server.openai(error_body(OPENAI_PATH, 500, "model overloaded"))
    with pytest.raises(ProviderError) as caught:
        ask(client(llm_server))
    assert caught.value.transient and not caught.value.configuration
    assert forms_sent(llm_server) == ["json_schema"]  # not mistaken for a refusal of the form


def test_every_mode_is_a_known_form():
    assert FORMS == ("schema", "object_schema", "object", "off")
    with pytest.raises(Exception, match="json_mode"):
        make_client({"provider": "openai", "model": "m", "json_mode": "grammar"})


# ------------------------------------------------------------ in the quorum
def quorum_config(server, **validator):
    return DispatchConfig.model_validate({"validators": {"local": {
        "kind": "openai", "model": "local", "base_url": server.openai_base_url, "timeout_s": 5, **validator}},
        "quorum": {"max_retries": 0, "breaker_failures": 1}})


def test_an_openai_validator_at_a_llama_cpp_server_votes_with_the_default_config(llm_server):
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.for_model("local", verdict("PASS", 88))
    cache = MemoryCache()
    result = run_quorum(REQUEST, quorum_config(llm_server), cache=cache, breakers=BreakerBoard(),
                        sleep=lambda s: None, rng=random.Random(1)).result
    vote = result.votes[0]
    assert vote.recommendation == "PASS" and vote.error is None and vote.json_mode == "object_schema"
    assert (vote.input_tokens, vote.output_tokens) == (11, 7)
    assert result.decision == "PASS"


def test_a_refused_fixed_mode_abstains_without_tripping_the_breaker(llm_server):
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    breakers = BreakerBoard()
    cfg = quorum_config(llm_server, json_mode="schema")
    sleeps: list[float] = []
    for _ in range(3):  # breaker_failures = 1: one real failure would open it
        result = run_quorum(REQUEST, cfg, breakers=breakers, sleep=sleeps.append, rng=random.Random(1)).result
        assert "Input should be 'text' or 'json_object'" in (result.votes[0].error or "")
    assert len(llm_server.requests) == 3  # asked every time: the breaker stayed closed
    assert breakers.peek(f"openai:{llm_server.openai_base_url}").state == "closed"
    assert sleeps == []  # max_retries = 0: and nothing backed off on the refusal itself


def test_the_llm_agent_output_schema_goes_through_the_negotiation(llm_server):
    from dispatch.agents import AgentInvocation, make_agent, run_agent
    from dispatch.models import TaskSpec
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.fallback = answer_text('{"x": 3}')
    config = DispatchConfig.model_validate({"agents": {"writer": {
        "kind": "llm", "provider": "openai", "model": "m", "base_url": llm_server.openai_base_url,
        "output_schema": SCHEMA}}})
    agent = make_agent("writer", config)
    task = TaskSpec(task_id="t", agent="writer", description="give x")
    outcome = run_agent(agent, AgentInvocation(task=task, context=None, dependency_outputs={}, user_prompt="x",
                                               workspace_path=".", run_id="r1", attempt=1, timeout_s=10))
    assert outcome.success, outcome.error
    assert outcome.output["json"] == {"x": 3} and outcome.output["json_mode"] == "object_schema"
    assert outcome.output["usage"] == {"input_tokens": 11, "output_tokens": 7}
    assert forms_sent(llm_server) == ["json_schema", "json_object"]


# ------------------------------------------------------------ the planner's schema, for small models
def planner_config(server, **planner):
    return DispatchConfig.model_validate({
        "validators": {"gpt": {"kind": "openai", "model": "gpt", "base_url": server.openai_base_url}},
        "planner": {"kind": "openai", "model": "planner", "base_url": server.openai_base_url, **planner},
        "quorum": {"max_retries": 1, "backoff_base_s": 0}})


def test_the_planner_schema_names_the_runs_agents_and_bounds_the_list(llm_server):
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.for_model("gpt", verdict("RETRY", 50, "Vague"), verdict("PASS", 90))
    llm_server.for_model("planner", answer_text(json.dumps({"tasks": [
        {"task_id": "pool", "agent": "writer", "description": "Implement the postgres connection pool"}]})))
    outcome = run_quorum(REQUEST, planner_config(llm_server), sleep=lambda s: None, breakers=BreakerBoard(),
                         known_agents={"writer", "echo"})
    assert outcome.result.decision == "PASS" and outcome.tasks[0].agent == "writer"
    sent = [r.body for r in llm_server.requests_for("planner")][-1]["response_format"]
    assert sent["type"] == "json_object"  # llama.cpp: the schema goes inside json_object
    tasks = sent["schema"]["properties"]["tasks"]
    assert tasks["items"]["properties"]["agent"] == {"type": "string", "enum": ["echo", "writer"]}
    assert tasks["maxItems"] == 8 and tasks["items"]["properties"]["description"]["minLength"] == 1


def test_a_cut_off_planner_answer_is_refused_for_what_it_is(llm_server):
    llm_server.for_model("gpt", verdict("RETRY", 50, "Vague"), verdict("PASS", 90))
    llm_server.for_model("planner", answer_text('{"tasks": [{"task_id": "a", "agent": "llm", "description": "x"}, '
                                                '{"task_id": "b", "agent": "ll', cut_off=True, usage=(400, 300)))
    outcome = run_quorum(REQUEST, planner_config(llm_server, max_tasks=3), sleep=lambda s: None,
                         breakers=BreakerBoard())
    [warning] = outcome.result.warnings
    assert "the answer was cut off after 300 tokens" in warning and "keeping the previous breakdown" in warning
    sent = llm_server.requests_for("planner")[0].body["response_format"]["json_schema"]["schema"]
    assert sent["properties"]["tasks"]["maxItems"] == 3


def test_bad_max_tasks_is_a_config_error(llm_server):
    with pytest.raises(Exception, match=r"planner\.max_tasks"):
        run_quorum(REQUEST, planner_config(llm_server, max_tasks=0), sleep=lambda s: None)


@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_share_the_negotiated_form_through_real_redis(llm_server, redis_server):
    """The cache workers get is the deployment's Redis: a second worker does not negotiate again."""
    import redis

    from dispatch.store.deployment import RedisCache
    from dispatch.store.keys import Keys
    llm_server.dialect = DIALECTS["llama-cpp-python"]
    llm_server.fallback = verdict("PASS", 90)
    connection = redis.Redis.from_url(redis_server.url)
    options = {"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url}
    for worker in range(2):
        c = make_client(options, shared_cache=RedisCache(connection, Keys("negotiation-test")))
        c.memory = FormMemory()  # each worker process has its own memory
        assert ask(c).json_mode == "object_schema"
        c.close()
    assert forms_sent(llm_server) == ["json_schema", "json_object", "json_object"]
    [key] = connection.keys("negotiation-test:cache:structured-output:*")
    assert json.loads(connection.get(key))["json_mode"] == "object_schema"
    assert 0 < connection.ttl(key) <= 24 * 3600
