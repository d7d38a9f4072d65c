"""``run_quorum`` end to end: model validators on a real local HTTP server.

Each validator uses its own model name, and the server scripts answers per model
(``for_model``), so concurrent validators get their own answers deterministically.
"""
from __future__ import annotations

import json
import random
import time

import pytest
from llm_server import OPENAI_PATH, Reply, answer_text, error_body, llm_server, verdict  # noqa: F401

from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput
from dispatch.common.breaker import BreakerBoard
from dispatch.quorum import VALIDATORS, Validator, Verdict, render_quorum_log, run_quorum

SECRET = "sk-quorum-secret-0042"
PROMPT = "Build a postgres adapter with connection pooling"
TASKS = [
    {"task_id": "pool", "agent": "llm", "description": "Implement the postgres connection pool"},
    {"task_id": "adapter", "agent": "llm", "description": "Implement adapter queries on the pool",
     "dependencies": ["pool"]},
]
REQUEST = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": TASKS})


def openai_v(server, model, weight=1.0, **options):
    return {"kind": "openai", "weight": weight, "model": model, "base_url": server.openai_base_url,
            "timeout_s": 5, **options}


def anthropic_v(server, model, weight=1.0, **options):
    return {"kind": "anthropic", "weight": weight, "model": model, "base_url": server.anthropic_base_url,
            "timeout_s": 5, **options}


def config(validators, planner=None, **quorum):
    return DispatchConfig.model_validate({"validators": validators, "planner": planner,
                                          "quorum": {"backoff_base_s": 0.5, **quorum}})


class Run:
    """Calls ``run_quorum`` with observable sleep, log and a private breaker board."""

    def __init__(self):
        self.sleeps: list[float] = []
        self.lines: list[str] = []
        self.breakers = BreakerBoard()

    def __call__(self, cfg, request=REQUEST, **kwargs):
        self.lines = []
        kwargs.setdefault("breakers", self.breakers)
        return run_quorum(request, cfg, on_event=self.lines.append, sleep=self.sleeps.append,
                          rng=random.Random(1), **kwargs)


@pytest.fixture
def run():
    return Run()


# ------------------------------------------------------------ vote mixes
@pytest.mark.parametrize("answers,decision", [
    (["PASS", "PASS", "RETRY"], "PASS"),
    (["PASS", "RETRY", "FAIL"], "RETRY"),
    (["PASS", "FAIL", "FAIL"], "FAIL"),
])
def test_mixed_votes_over_both_protocols(llm_server, run, answers, decision):
    llm_server.for_model("a", verdict(answers[0], 90))
    llm_server.for_model("b", verdict(answers[1], 60, "Add retry handling"))
    llm_server.for_model("c", verdict(answers[2], 20, "Wrong subject"))
    llm_server.fallback = verdict("PASS", 90)  # later attempts, when the decision is RETRY
    cfg = config({"a": openai_v(llm_server, "a"), "b": anthropic_v(llm_server, "b"),
                  "c": openai_v(llm_server, "c")}, max_retries=0)
    result = run(cfg).result
    assert result.decision == decision
    assert [(v.validator, v.kind, v.recommendation) for v in result.votes] == \
        [("a", "openai", answers[0]), ("b", "anthropic", answers[1]), ("c", "openai", answers[2])]
    assert all(v.latency_ms > 0 and v.error is None and not v.cached for v in result.votes)
    assert result.votes[1].alignment_score == 60.0 and result.votes[1].deficiencies == ["Add retry handling"]


def test_weights_flip_the_decision(llm_server, run):
    for heavy, expected in ((1.0, "FAIL"), (4.0, "PASS")):
        llm_server.for_model("heavy", verdict("PASS", 95))
        llm_server.for_model("x", verdict("FAIL", 10, "Off topic"))
        llm_server.for_model("y", verdict("FAIL", 15, "Off topic"))
        cfg = config({"heavy": openai_v(llm_server, "heavy", weight=heavy), "x": openai_v(llm_server, "x"),
                      "y": anthropic_v(llm_server, "y")})
        assert run(cfg).result.decision == expected


def test_rules_and_models_vote_together(llm_server, run):
    llm_server.for_model("gpt", verdict("PASS", 88))
    cfg = config({"rules": {"kind": "rules"}, "gpt": openai_v(llm_server, "gpt", weight=2)})
    result = run(cfg).result
    assert result.decision == "PASS"
    assert [(v.kind, v.recommendation) for v in result.votes] == [("rules", "PASS"), ("openai", "PASS")]


def test_the_question_carries_prompt_breakdown_and_node_types(llm_server, run):
    request = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
        {**TASKS[0], "input_data": {"node_type": "Effect"}, "owner": "team-db"}, TASKS[1]]})
    llm_server.for_model("gpt", verdict("PASS", 90, correct_node_type=False, expected_node_type="Compute"))
    result = run(config({"gpt": openai_v(llm_server, "gpt")}), request).result
    body = llm_server.requests_for("gpt")[0].body
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert "correct_node_type" in system and PROMPT in user
    breakdown = json.loads(user.split("JSON):\n", 1)[1])
    assert breakdown[0]["input_data"] == {"node_type": "Effect"} and breakdown[0]["owner"] == "team-db"
    assert body["temperature"] == 0.0 and body["response_format"]["type"] == "json_schema"
    assert result.votes[0].deficiencies == ["Node type should be Compute"]


# ------------------------------------------------------------ abstentions
def test_slow_answer_past_the_timeout_abstains(llm_server, run):
    llm_server.for_model("slow", Reply(text=json.dumps({"recommendation": "FAIL", "alignment_score": 0}),
                                       delay_s=3.0))
    llm_server.for_model("fast", verdict("PASS", 90))
    llm_server.for_model("fast2", verdict("PASS", 90))
    cfg = config({"slow": openai_v(llm_server, "slow", timeout_s=0.3), "fast": openai_v(llm_server, "fast"),
                  "fast2": anthropic_v(llm_server, "fast2")})
    started = time.perf_counter()
    result = run(cfg).result
    assert time.perf_counter() - started < 2.0
    slow = result.votes[0]
    assert slow.abstained and slow.error == "openai: timed out after 0.3s"
    assert result.decision == "PASS" and result.quorum_reached  # 2/3 answered >= 0.60
    assert "⚠ Validator 'slow' abstained: openai: timed out after 0.3s" in run.lines


@pytest.mark.parametrize("reply,error", [
    (error_body(OPENAI_PATH, 500, "internal meltdown"), "openai: HTTP 500: internal meltdown"),
    (answer_text("Looks good overall {recommendation: PASS"), "unparseable answer: no JSON object"),
    (Reply(raw="upstream connect error"), "openai: response body is not JSON"),
])
def test_errors_and_unreadable_answers_abstain(llm_server, run, reply, error):
    llm_server.for_model("bad", reply)
    llm_server.for_model("good", verdict("RETRY", 55, "Add tests"))
    llm_server.for_model("good2", verdict("RETRY", 55, "Add tests"))
    cfg = config({"bad": openai_v(llm_server, "bad"), "good": anthropic_v(llm_server, "good"),
                  "good2": openai_v(llm_server, "good2")}, max_retries=0)
    result = run(cfg).result
    assert result.votes[0].abstained and result.votes[0].error.startswith(error)
    assert result.decision == "RETRY" and result.deficiencies == ["Add tests"]


@pytest.mark.parametrize("text", [
    'Here is my review.\n\n{"recommendation": "PASS", "alignment_score": 91, "missing_requirements": []}\n\nBye.',
    'Sure:\n```json\n{"recommendation": "PASS", "alignment_score": 91, "missing_requirements": []}\n```',
    '<think>The user wants postgres.</think>\n{"recommendation": "PASS", "alignment_score": 91}',
])
def test_wrapped_answers_are_votes(llm_server, run, text):
    llm_server.for_model("gpt", answer_text(text))
    result = run(config({"gpt": anthropic_v(llm_server, "gpt")})).result
    assert result.decision == "PASS" and result.votes[0].alignment_score == 91.0


def test_validators_run_concurrently(llm_server, run):
    for model in ("a", "b", "c"):
        llm_server.for_model(model, Reply(text=json.dumps({"recommendation": "PASS", "alignment_score": 80}),
                                          delay_s=0.6))
    cfg = config({m: openai_v(llm_server, m) for m in ("a", "b", "c")})
    started = time.perf_counter()
    result = run(cfg).result
    assert time.perf_counter() - started < 1.5  # not 3 x 0.6
    assert result.decision == "PASS" and all(v.latency_ms >= 550 for v in result.votes)


@VALIDATORS.register("test-stuck")
class StuckValidator(Validator):
    """Blocks far past its deadline: the runner must not wait for it."""

    @property
    def deadline_s(self) -> float:
        return 0.3

    def validate(self, request):
        time.sleep(3)
        return Verdict("PASS", 100, 1.0)


def test_a_validator_past_its_deadline_abstains_without_holding_the_phase(run):
    cfg = config({"stuck": {"kind": "test-stuck"}, "rules": {"kind": "rules", "weight": 2}})
    started = time.perf_counter()
    result = run(cfg).result
    assert time.perf_counter() - started < 1.5
    assert result.votes[0].error == "no answer within 0.3s" and result.votes[1].recommendation == "PASS"
    assert result.decision == "PASS" and result.answered_share == pytest.approx(2 / 3, abs=1e-4)


# ------------------------------------------------------------- no quorum
def test_no_quorum_warns_and_keeps_the_answered_decision(llm_server, run):
    llm_server.for_model("up", verdict("PASS", 90))
    llm_server.for_model("down", error_body(OPENAI_PATH, 503, "unavailable"))
    cfg = config({"up": openai_v(llm_server, "up"), "down": openai_v(llm_server, "down")})
    result = run(cfg).result
    assert result.decision == "PASS" and result.quorum_reached is False and result.answered_share == 0.5
    assert result.warnings == ["Quorum not reached: 50.0% of validator weight answered (minimum 60.0%)"]
    assert run.lines[-1] == "⚠ Quorum not reached: 50.0% of validator weight answered (minimum 60.0%)"


def test_no_quorum_fail_policy_fails(llm_server, run):
    llm_server.for_model("up", verdict("PASS", 90))
    llm_server.for_model("down", error_body(OPENAI_PATH, 503, "unavailable"))
    cfg = config({"up": openai_v(llm_server, "up"), "down": openai_v(llm_server, "down")}, on_no_quorum="fail")
    result = run(cfg).result
    assert result.decision == "FAIL" and result.quorum_reached is False and result.retry_count == 0


def test_nobody_answering_retries_then_warns_and_continues(llm_server, run):
    llm_server.fallback = error_body(OPENAI_PATH, 502, "bad gateway")
    cfg = config({"gpt": openai_v(llm_server, "gpt")}, max_retries=2, breaker_failures=10)
    outcome = run(cfg)
    result = outcome.result
    assert result.decision == "RETRY" and result.retry_count == 2 and result.confidence == 0.0
    assert run.sleeps == [0.5, 1.0]
    assert "Max retries exceeded (2): continuing with the current breakdown" in result.warnings
    assert outcome.tasks == REQUEST.tasks


def test_bad_no_quorum_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="on_no_quorum"):
        run_quorum(REQUEST, config({}, on_no_quorum="shrug"))


# ------------------------------------------------------- retry and backoff
def test_retry_then_pass_reproduces_the_guide_transcript(llm_server, run):
    llm_server.for_model("gpt",
                         verdict("RETRY", 65, "Task dependencies may be incomplete",
                                 "Context requirements need clarification"),
                         verdict("PASS", 85))
    outcome = run(config({"gpt": openai_v(llm_server, "gpt")}))
    result = outcome.result
    assert run.lines == [
        "Validating task breakdown with AI quorum...",
        "Quorum decision: RETRY (confidence: 65.0%)",
        "Deficiencies found: 2",
        "  - Task dependencies may be incomplete",
        "  - Context requirements need clarification",
        "",
        "Retry attempt 1/3",
        "Validating task breakdown with AI quorum...",
        "Quorum decision: PASS (confidence: 85.0%)",
    ]
    assert render_quorum_log(result, 3) == run.lines
    assert run.sleeps == [0.5]
    assert (result.decision, result.confidence, result.retry_count) == ("PASS", 0.85, 1)
    assert [a.decision for a in result.attempts] == ["RETRY", "PASS"]
    assert result.attempts[0].deficiencies == ["Task dependencies may be incomplete",
                                               "Context requirements need clarification"]
    assert result.attempts[1].backoff_s == 0.5 and result.deficiencies == []


def test_retries_back_off_exponentially_until_exhausted(llm_server, run):
    llm_server.for_model("gpt", *[verdict("RETRY", 50, "Vague tasks") for _ in range(4)])
    cfg = config({"gpt": openai_v(llm_server, "gpt")}, backoff_base_s=1.0, backoff_cap_s=3.0)
    result = run(cfg).result
    assert run.sleeps == [1.0, 2.0, 3.0]
    assert [a.backoff_s for a in result.attempts] == [0.0, 1.0, 2.0, 3.0]
    assert result.decision == "RETRY" and result.retry_count == 3
    assert result.warnings == ["Max retries exceeded (3): continuing with the current breakdown"]
    assert run.lines[-1] == "⚠ Max retries exceeded (3): continuing with the current breakdown"
    assert "Retry attempt 3/3" in run.lines and len(llm_server.requests_for("gpt")) == 4


def test_fail_stops_at_once(llm_server, run):
    llm_server.for_model("gpt", verdict("FAIL", 5, "The breakdown is about authentication"))
    result = run(config({"gpt": openai_v(llm_server, "gpt")})).result
    assert result.decision == "FAIL" and result.retry_count == 0 and run.sleeps == []


def test_rules_only_retry_is_not_repeated_without_a_planner(run):
    request = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
        {"task_id": "pool", "agent": "wizard", "description": "Implement the postgres connection pool"}]})
    result = run(DispatchConfig(), request, known_agents={"echo", "sleep"}).result
    assert result.decision == "RETRY" and result.retry_count == 0 and run.sleeps == []
    assert result.warnings[0].startswith("Retries skipped: the quorum is deterministic")
