"""Circuit breaker, vote cache, planner loop and secret handling, against a real local server."""
from __future__ import annotations

import json
import random

import pytest
from llm_server import OPENAI_PATH, Reply, answer_text, error_body, llm_server, verdict  # noqa: F401

from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput
from dispatch.common.breaker import BreakerBoard
from dispatch.quorum import MemoryCache, run_quorum

SECRET = "sk-quorum-secret-0042"
PROMPT = "Build a postgres adapter with connection pooling"
REQUEST = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
    {"task_id": "pool", "agent": "llm", "description": "Implement the postgres connection pool"}]})


class Clock:
    def __init__(self):
        self.now = 500.0

    def __call__(self):
        return self.now


def quorum(validators, planner=None, **options):
    return DispatchConfig.model_validate({"validators": validators, "planner": planner, "quorum": options})


def gpt(server, model="gpt", **options):
    return {"kind": "openai", "model": model, "base_url": server.openai_base_url, "timeout_s": 5, **options}


def claude(server, model="claude", **options):
    return {"kind": "anthropic", "model": model, "base_url": server.anthropic_base_url, "timeout_s": 5, **options}


def run(cfg, request=REQUEST, **kwargs):
    kwargs.setdefault("breakers", BreakerBoard())
    lines: list[str] = []
    outcome = run_quorum(request, cfg, on_event=lines.append, sleep=lambda s: None, rng=random.Random(0), **kwargs)
    outcome.lines = lines  # type: ignore[attr-defined]
    return outcome


# ------------------------------------------------------------------ breaker
def test_breaker_opens_then_half_opens_and_closes(llm_server):
    clock = Clock()
    board = BreakerBoard(clock=clock)
    cfg = quorum({"gpt": gpt(llm_server)}, max_retries=0, breaker_failures=2, breaker_cooldown_s=10)
    llm_server.for_model("gpt", error_body(OPENAI_PATH, 500, "down"), error_body(OPENAI_PATH, 500, "down"))
    for _ in range(2):
        assert run(cfg, breakers=board).result.votes[0].error == "openai: HTTP 500: down"
    breaker = board.peek(f"openai:{llm_server.openai_base_url}")
    assert breaker is not None and breaker.state == "open"

    # Open: the validator abstains at once, the server is not called.
    calls = len(llm_server.requests)
    outcome = run(cfg, breakers=board)
    assert outcome.result.votes[0].error == "circuit open" and len(llm_server.requests) == calls
    assert "⚠ Validator 'gpt' abstained: circuit open" in outcome.lines

    # After the cool-down one trial call goes out; its success closes the breaker.
    clock.now += 10
    llm_server.for_model("gpt", verdict("PASS", 90), verdict("PASS", 90))
    assert run(cfg, breakers=board).result.decision == "PASS"
    assert breaker.state == "closed" and len(llm_server.requests) == calls + 1
    assert run(cfg, breakers=board).result.votes[0].recommendation == "PASS"


def test_breaker_is_per_endpoint_and_unreadable_answers_do_not_trip_it(llm_server):
    board = BreakerBoard()
    cfg = quorum({"gpt": gpt(llm_server), "claude": claude(llm_server)}, max_retries=0, breaker_failures=1)
    llm_server.for_model("gpt", error_body(OPENAI_PATH, 500, "down"))
    llm_server.for_model("claude", answer_text("no idea"))
    result = run(cfg, breakers=board).result
    assert result.votes[1].error.startswith("unparseable answer")
    assert board.peek(f"openai:{llm_server.openai_base_url}").state == "open"
    assert board.peek(f"anthropic:{llm_server.anthropic_base_url}").state == "closed"


# -------------------------------------------------------------------- cache
def test_cached_votes_are_reused_and_marked(llm_server):
    cache = MemoryCache()
    cfg = quorum({"gpt": gpt(llm_server), "claude": claude(llm_server)})
    llm_server.for_model("gpt", verdict("PASS", 90, "Add docs"))
    llm_server.for_model("claude", verdict("PASS", 80))
    first = run(cfg, cache=cache).result
    assert [v.cached for v in first.votes] == [False, False] and len(cache) == 2

    second = run(cfg, cache=cache).result
    assert len(llm_server.requests) == 2  # nothing asked again
    assert [v.cached for v in second.votes] == [True, True]
    assert [(v.recommendation, v.alignment_score, v.deficiencies) for v in second.votes] == \
        [(v.recommendation, v.alignment_score, v.deficiencies) for v in first.votes]
    assert second.decision == first.decision and second.confidence == first.confidence


def test_cache_misses_on_another_prompt_breakdown_or_config(llm_server):
    cache = MemoryCache()
    llm_server.fallback = verdict("PASS", 90)
    cfg = quorum({"gpt": gpt(llm_server)})
    run(cfg, cache=cache)
    run(cfg, REQUEST.model_copy(update={"user_prompt": PROMPT + " and metrics"}), cache=cache)
    changed_tasks = REQUEST.model_copy(deep=True)
    changed_tasks.tasks[0].description += " with health checks"
    run(cfg, changed_tasks, cache=cache)
    run(quorum({"gpt": gpt(llm_server, temperature=0.5)}), cache=cache)
    assert len(llm_server.requests) == 4
    run(cfg, cache=cache)
    assert len(llm_server.requests) == 4


def test_cache_ttl_and_retries_ask_afresh(llm_server):
    clock = Clock()
    cache = MemoryCache(clock=clock)
    llm_server.for_model("gpt", verdict("RETRY", 50, "Vague"), verdict("PASS", 90))
    cfg = quorum({"gpt": gpt(llm_server)}, cache_ttl_s=60)
    result = run(cfg, cache=cache).result
    assert [a.decision for a in result.attempts] == ["RETRY", "PASS"]  # the retry did not reuse the RETRY
    assert run(cfg, cache=cache).result.votes[0].cached  # the fresh PASS was written
    clock.now += 61
    llm_server.for_model("gpt", verdict("PASS", 91))
    assert not run(cfg, cache=cache).result.votes[0].cached


def test_a_broken_cache_costs_nothing_but_a_warning(llm_server):
    class Broken:
        def get(self, key):
            raise ConnectionError("redis is down")

        def set(self, key, value, ttl_s):
            raise ConnectionError("redis is down")

    llm_server.for_model("gpt", verdict("PASS", 90))
    result = run(quorum({"gpt": gpt(llm_server)}), cache=Broken()).result
    assert result.decision == "PASS"
    assert result.warnings == ["Vote cache unavailable: ConnectionError: redis is down"]


# ------------------------------------------------------------------ planner
NEW_TASKS = [
    {"task_id": "pool", "agent": "llm", "description": "Implement the postgres connection pool"},
    {"task_id": "queries", "agent": "llm", "description": "Implement adapter query methods using the pool",
     "dependencies": ["pool"]},
]


def test_retry_sends_deficiencies_to_the_planner_and_validates_its_breakdown(llm_server):
    llm_server.for_model("gpt", verdict("RETRY", 55, "No task implements the adapter's queries"),
                         verdict("PASS", 92))
    llm_server.for_model("planner", answer_text("Revised breakdown:\n```json\n"
                                                + json.dumps({"tasks": NEW_TASKS}) + "\n```"))
    cfg = quorum({"gpt": gpt(llm_server)}, planner=claude(llm_server, "planner"))
    outcome = run(cfg)
    assert outcome.result.decision == "PASS" and outcome.result.retry_count == 1
    assert [t.task_id for t in outcome.tasks] == ["pool", "queries"]

    [plan_request] = llm_server.requests_for("planner")
    asked = plan_request.body["messages"][0]["content"]
    assert "- No task implements the adapter's queries" in asked and PROMPT in asked
    assert '"pool"' in asked and "llm" in plan_request.body["system"]
    second_check = llm_server.requests_for("gpt")[1].body["messages"][1]["content"]
    assert '"queries"' in second_check  # the retry validated the revised breakdown
    note = "Breakdown revised by the planner after attempt 1: 2 tasks (was 1): +queries"
    assert outcome.result.warnings == [note]
    assert outcome.lines.index("⚠ " + note) < outcome.lines.index("Retry attempt 1/3")
    assert outcome.lines.count("⚠ " + note) == 1


def test_interactive_feedback_reaches_the_planner(llm_server):
    llm_server.for_model("gpt", verdict("RETRY", 55, "Vague"), verdict("PASS", 90))
    llm_server.for_model("planner", answer_text(json.dumps({"tasks": NEW_TASKS})))
    cfg = quorum({"gpt": gpt(llm_server)}, planner=claude(llm_server, "planner"))
    request = type(REQUEST).model_validate({**REQUEST.model_dump(), "quorum_feedback": "Split out the pool"})
    assert run(cfg, request=request).result.decision == "PASS"
    [plan_request] = llm_server.requests_for("planner")
    assert "Feedback from the person reviewing this breakdown:\nSplit out the pool" in \
        plan_request.body["messages"][0]["content"]


@pytest.mark.parametrize("answer,reason", [
    ({"tasks": [{"task_id": "a", "agent": "llm", "description": "x", "dependencies": ["b"]},
                {"task_id": "b", "agent": "llm", "description": "y", "dependencies": ["a"]}]},
     "tasks: dependency cycle (a -> b: a depends on b): a -> b -> a"),
    ({"tasks": [{"task_id": "a", "agent": "llm", "description": "x", "dependencies": ["ghost"]}]},
     "tasks[0].dependencies: unknown task 'ghost'"),
    ({"tasks": [{"task_id": "a", "description": "no agent"}]}, "tasks[0].agent: Field required"),
    ({"tasks": []}, "tasks: List should have at least 1 item"),
    ({"plan": "think harder"}, "tasks: Input should be a valid list"),
])
def test_an_invalid_planner_breakdown_is_refused_and_the_old_one_kept(llm_server, answer, reason):
    llm_server.for_model("gpt", verdict("RETRY", 55, "Vague"), verdict("PASS", 80))
    llm_server.for_model("planner", answer_text(json.dumps(answer)))
    outcome = run(quorum({"gpt": gpt(llm_server)}, planner=gpt(llm_server, "planner")))
    assert outcome.result.decision == "PASS"
    assert outcome.tasks == REQUEST.tasks
    [warning] = outcome.result.warnings
    assert warning.startswith("Planner could not revise the breakdown after attempt 1: ")
    assert reason in warning and warning.endswith("keeping the previous breakdown")


def test_a_failing_planner_is_a_warning_not_a_crash(llm_server):
    llm_server.for_model("gpt", verdict("RETRY", 55, "Vague"), verdict("RETRY", 55, "Vague"))
    llm_server.for_model("planner", error_body(OPENAI_PATH, 500, "planner down"))
    outcome = run(quorum({"gpt": gpt(llm_server)}, planner=gpt(llm_server, "planner"), max_retries=1))
    assert outcome.result.decision == "RETRY"
    assert any("planner down" in w for w in outcome.result.warnings)
    assert "Max retries exceeded (1): continuing with the current breakdown" in outcome.result.warnings


def test_bad_planner_or_validator_options_are_config_errors(llm_server):
    with pytest.raises(ConfigError, match=r"planner\.model: a model name is required"):
        run(quorum({}, planner={"kind": "openai", "base_url": llm_server.openai_base_url}))
    with pytest.raises(ConfigError, match=r"validators\.gpt\.timeout_s"):
        run(quorum({"gpt": gpt(llm_server, timeout_s=-1)}))


# ------------------------------------------------------------------ secrets
def test_api_keys_go_in_the_right_header_and_nowhere_else(llm_server, monkeypatch):
    monkeypatch.setenv("QUORUM_OPENAI_KEY", SECRET)
    monkeypatch.setenv("QUORUM_ANTHROPIC_KEY", SECRET + "-a")
    llm_server.for_model("gpt", verdict("PASS", 90))
    llm_server.for_model("claude", Reply(body={"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {SECRET}-a"}}, status=401))
    cfg = quorum({"gpt": gpt(llm_server, api_key_env="QUORUM_OPENAI_KEY"),
                  "claude": claude(llm_server, api_key_env="QUORUM_ANTHROPIC_KEY")}, min_answered_share=0.5)
    outcome = run(cfg, cache=MemoryCache())
    assert llm_server.requests_for("gpt")[0].headers["authorization"] == f"Bearer {SECRET}"
    claude_headers = llm_server.requests_for("claude")[0].headers
    assert claude_headers["x-api-key"] == SECRET + "-a" and "authorization" not in claude_headers
    dumped = outcome.result.model_dump_json() + "\n".join(outcome.lines) + json.dumps(cfg.model_dump())
    assert SECRET not in dumped
    assert outcome.result.votes[1].error == "anthropic: HTTP 401: invalid x-api-key ***"


def test_a_missing_key_variable_abstains_with_its_name(llm_server, monkeypatch):
    monkeypatch.delenv("QUORUM_MISSING_KEY", raising=False)
    cfg = quorum({"gpt": gpt(llm_server, api_key_env="QUORUM_MISSING_KEY"), "rules": {"kind": "rules", "weight": 2}})
    result = run(cfg).result
    assert result.votes[0].error == "openai: environment variable QUORUM_MISSING_KEY is not set"
    assert result.decision == "PASS" and llm_server.requests == []


@pytest.mark.parametrize("options,message", [
    ({"breaker_failures": 0}, "quorum.breaker_failures"),
    ({"breaker_cooldown_s": "soon"}, "quorum.breaker_cooldown_s"),
])
def test_bad_breaker_settings_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        run(quorum({}, **options))


def test_bad_score_option_is_a_config_error(llm_server):
    with pytest.raises(ConfigError, match=r"validators\.gpt\.pass_score"):
        run(quorum({"gpt": gpt(llm_server, pass_score="high")}))
