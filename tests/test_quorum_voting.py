"""Pure parts of phase 1: vote counting, backoff, breaker, cache, answer parsing, the log."""
from __future__ import annotations

import random

import pytest

from dispatch.config import QuorumOptions
from dispatch.models import DispatchInput, QuorumAttempt, QuorumResult, TaskSpec, ValidatorVote
from dispatch.common.breaker import CircuitBreaker
from dispatch.quorum import AnswerError, MemoryCache, render_quorum_log, retry_delay, tally, vote_key
from dispatch.quorum.prompt import parse_verdict

GUIDE_TRANSCRIPT = """\
[DispatchRunner] Validating task breakdown with AI quorum...
[DispatchRunner] Quorum decision: RETRY (confidence: 65.0%)
[DispatchRunner] Deficiencies found: 2
[DispatchRunner]   - Task dependencies may be incomplete
[DispatchRunner]   - Context requirements need clarification

[DispatchRunner] Retry attempt 1/3
[DispatchRunner] Validating task breakdown with AI quorum...
[DispatchRunner] Quorum decision: PASS (confidence: 85.0%)"""


def prefixed(lines):
    """What the caller prints: the prefix on every non-blank line."""
    return "\n".join(f"[DispatchRunner] {line}" if line else "" for line in lines)


def vote(name, rec, weight=1.0, confidence=0.8, deficiencies=(), error=None):
    return ValidatorVote(validator=name, kind="openai", weight=weight, recommendation=rec,
                         confidence=confidence if rec else None, deficiencies=list(deficiencies), error=error)


OPTIONS = QuorumOptions()


# -------------------------------------------------------------------- tally
@pytest.mark.parametrize("recs,decision", [
    (["PASS"], "PASS"),
    (["PASS", "PASS", "RETRY"], "PASS"),  # 0.67 >= 0.60
    (["PASS", "PASS", "FAIL"], "PASS"),
    (["PASS", "RETRY", "FAIL"], "RETRY"),  # pass + retry = 0.67 >= 0.60
    (["RETRY", "RETRY", "FAIL"], "RETRY"),
    (["PASS", "FAIL", "FAIL"], "FAIL"),
    (["RETRY", "FAIL", "FAIL"], "FAIL"),  # retry 0.33 < 0.40, pass + retry < 0.60
    (["PASS", "PASS", "PASS", "FAIL", "FAIL"], "PASS"),  # exactly 0.60
    (["RETRY", "RETRY", "FAIL", "FAIL", "FAIL"], "RETRY"),  # exactly 0.40
])
def test_decision_from_equal_weights(recs, decision):
    assert tally([vote(f"v{i}", r) for i, r in enumerate(recs)], OPTIONS).decision == decision


def test_weights_flip_the_decision():
    votes = [vote("big", "PASS"), vote("a", "FAIL"), vote("b", "FAIL")]
    assert tally(votes, OPTIONS).decision == "FAIL"
    votes[0] = vote("big", "PASS", weight=4.0)
    counted = tally(votes, OPTIONS)
    assert counted.decision == "PASS"
    assert counted.shares == {"PASS": pytest.approx(4 / 6), "RETRY": 0.0, "FAIL": pytest.approx(2 / 6)}


def test_thresholds_are_configurable():
    votes = [vote("a", "PASS"), vote("b", "PASS"), vote("c", "RETRY")]
    assert tally(votes, QuorumOptions(pass_threshold=0.75)).decision == "RETRY"


def test_confidence_is_the_backing_votes_confidence_over_the_whole_quorum():
    counted = tally([vote("a", "PASS", confidence=0.9), vote("b", "PASS", confidence=0.7),
                     vote("c", "FAIL", confidence=0.99)], OPTIONS)
    assert counted.confidence == pytest.approx((0.9 + 0.7) / 3, abs=1e-4)
    assert tally([vote("a", "RETRY", confidence=0.65)], OPTIONS).confidence == 0.65


def test_deficiencies_are_merged_in_order_without_duplicates():
    counted = tally([vote("a", "RETRY", deficiencies=["Missing tests", "Dependencies incomplete"]),
                     vote("b", "RETRY", deficiencies=["missing tests.", "Add metrics"]),
                     vote("c", None, error="boom")], OPTIONS)
    assert counted.deficiencies == ["Missing tests", "Dependencies incomplete", "Add metrics"]


def test_abstentions_are_not_votes_and_no_quorum_is_reported():
    votes = [vote("a", "PASS", weight=1.0), vote("b", None, weight=1.0, error="timed out"),
             vote("c", None, weight=1.0, error="HTTP 500")]
    counted = tally(votes, OPTIONS)
    assert counted.decision == "PASS"  # what the answered votes say, never upgraded ...
    assert counted.quorum_reached is False  # ... and never silent
    assert counted.answered_share == pytest.approx(1 / 3, abs=1e-4)
    assert counted.warnings == ["Quorum not reached: 33.3% of validator weight answered (minimum 60.0%)"]
    assert counted.confidence == pytest.approx(0.8 / 3, abs=1e-4)
    assert tally(votes, QuorumOptions(on_no_quorum="fail")).decision == "FAIL"


def test_nobody_answering_is_a_retry_with_zero_confidence():
    counted = tally([vote("a", None, error="x"), vote("b", None, error="y")], OPTIONS)
    assert (counted.decision, counted.confidence, counted.quorum_reached) == ("RETRY", 0.0, False)


# ------------------------------------------------------------------ backoff
def test_backoff_doubles_up_to_the_cap():
    options = QuorumOptions(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [retry_delay(k, options, random.Random(0)) for k in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_jitter_takes_a_random_share_off():
    options = QuorumOptions(backoff_base_s=1.0, backoff_cap_s=10.0, backoff_jitter=0.5)
    delays = [retry_delay(3, options, random.Random(seed)) for seed in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 10
    assert retry_delay(3, options, random.Random(7)) == retry_delay(3, options, random.Random(7))


# ------------------------------------------------------------------ breaker
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.record_failure()  # trial failed: open again for a full cool-down
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


# -------------------------------------------------------------------- cache
def test_memory_cache_expires_and_copies():
    clock = Clock()
    cache = MemoryCache(clock=clock)
    value = {"recommendation": "PASS", "deficiencies": []}
    cache.set("k", value, ttl_s=60)
    value["deficiencies"].append("mutated")
    got = cache.get("k")
    assert got == {"recommendation": "PASS", "deficiencies": []}
    got["recommendation"] = "FAIL"
    assert cache.get("k")["recommendation"] == "PASS"
    clock.now += 60
    assert cache.get("k") is None and len(cache) == 0
    cache.set("k", value, ttl_s=0)
    assert cache.get("k") is None


def test_vote_key_depends_on_prompt_breakdown_and_validator():
    req = DispatchInput(user_prompt="p", tasks=[TaskSpec(task_id="a", agent="llm", description="d")])
    fp = {"name": "gpt", "kind": "openai", "weight": 1.0, "options": {"model": "m"}}
    key = vote_key(req, fp)
    assert key.startswith("quorum:vote:") and key == vote_key(req.model_copy(deep=True), dict(fp))
    assert key != vote_key(req.model_copy(update={"user_prompt": "q"}), fp)
    assert key != vote_key(req.model_copy(update={"tasks": [TaskSpec(task_id="a", agent="llm",
                                                                      description="e")]}), fp)
    assert key != vote_key(req, {**fp, "options": {"model": "other"}})
    assert key != vote_key(req, {**fp, "weight": 2.0})


# ---------------------------------------------------------- answer parsing
def test_parse_verdict_reads_the_schema():
    verdict = parse_verdict('{"alignment_score": 42, "recommendation": "retry", '
                            '"missing_requirements": ["Add tests", {"requirement": "Add docs"}]}')
    assert (verdict.recommendation, verdict.alignment_score, verdict.confidence) == ("RETRY", 42.0, 0.42)
    assert verdict.deficiencies == ["Add tests", "Add docs"]


def test_parse_verdict_node_type_and_explicit_confidence():
    verdict = parse_verdict('```json\n{"alignment_score": 0.9, "recommendation": "PASS", "confidence": 0.6, '
                            '"missing_requirements": [], "correct_node_type": false, '
                            '"expected_node_type": "Compute"}\n```')
    assert verdict.alignment_score == 90.0 and verdict.confidence == 0.6
    assert verdict.deficiencies == ["Node type should be Compute"]


def test_parse_verdict_derives_the_recommendation_from_the_score():
    assert parse_verdict('{"alignment_score": "85%"}').recommendation == "PASS"
    assert parse_verdict('{"alignment_score": 50, "recommendation": "maybe"}').recommendation == "RETRY"
    assert parse_verdict('{"alignment_score": 10}').recommendation == "FAIL"


@pytest.mark.parametrize("text,reason", [
    ("The breakdown looks fine to me.", "no JSON object"),
    ('{"recommendation": "PASS", "alignment_score": 9', "no JSON object"),
    ('{"verdict": "good"}', "no recommendation and no alignment_score"),
    ('{"recommendation": "APPROVE"}', "unknown recommendation 'APPROVE'"),
])
def test_unreadable_answers_raise(text, reason):
    with pytest.raises(AnswerError, match=reason):
        parse_verdict(text)


# --------------------------------------------------------------------- log
def test_render_reproduces_the_guides_retry_transcript():
    result = QuorumResult(
        decision="PASS", confidence=0.85, retry_count=1,
        attempts=[QuorumAttempt(attempt=1, decision="RETRY", confidence=0.65,
                                deficiencies=["Task dependencies may be incomplete",
                                              "Context requirements need clarification"]),
                  QuorumAttempt(attempt=2, decision="PASS", confidence=0.85, backoff_s=0.5)])
    assert prefixed(render_quorum_log(result, max_retries=3)) == GUIDE_TRANSCRIPT


def test_render_adds_warnings_for_abstentions_and_results():
    result = QuorumResult(
        decision="PASS", confidence=0.3, quorum_reached=False, answered_share=0.5,
        warnings=["Quorum not reached: 50.0% of validator weight answered (minimum 60.0%)"],
        attempts=[QuorumAttempt(attempt=1, decision="PASS", confidence=0.3, answered_share=0.5,
                                votes=[vote("gpt", None, error="openai: timed out after 5s"),
                                       vote("claude", "PASS")])])
    assert render_quorum_log(result, 3) == [
        "Validating task breakdown with AI quorum...",
        "⚠ Validator 'gpt' abstained: openai: timed out after 5s",
        "Quorum decision: PASS (confidence: 30.0%)",
        "⚠ Quorum not reached: 50.0% of validator weight answered (minimum 60.0%)",
    ]
