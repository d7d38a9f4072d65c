"""A quorum that escalates and keeps score: tiers, the deterministic veto, learned weights.

Model validators answer from a real local HTTP server (``llm_server``), scripted
per model; the run history for scores and weights is made of ``PhaseState``
documents as the store keeps them.
"""
from __future__ import annotations

import random

import pytest
from llm_server import Reply, llm_server, verdict  # noqa: F401

from dispatch.common.breaker import BreakerBoard
from dispatch.config import DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import (DispatchInput, PhaseState, QuorumAttempt, QuorumResult, TaskResult, TaskSpec,
                             ValidatorVote)
from dispatch.quorum import (VALIDATORS, Validator, Verdict, quorum_stats, render_quorum_log, render_stats, run_quorum,
                             stats_json, wants_history)
from dispatch.quorum.records import breakdown_digest, vote_records

PROMPT = "Build a postgres adapter with connection pooling"
TASKS = [
    {"task_id": "pool", "agent": "llm", "description": "Implement the postgres connection pool"},
    {"task_id": "adapter", "agent": "llm", "description": "Implement postgres adapter queries on the pool",
     "dependencies": ["pool"]},
]
REQUEST = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": TASKS})


def model(server, name, tier, weight=1.0):
    return {"kind": "openai", "model": name, "base_url": server.openai_base_url, "timeout_s": 5, "tier": tier,
            "weight": weight}


def tiered(server, **quorum):
    return DispatchConfig.model_validate({"validators": {
        "rules": {"kind": "rules"}, "cheap": model(server, "cheap", 0), "strong": model(server, "strong", 1, 2.0)},
        "quorum": {"max_retries": 0, **quorum}})


def run(cfg, request=REQUEST, **kwargs):
    return run_quorum(request, cfg, breakers=BreakerBoard(), sleep=lambda s: None, rng=random.Random(1),
                      **kwargs).result


# ------------------------------------------------------------ escalation
def test_tier_1_is_not_asked_when_tier_0_agrees_confidently(llm_server):
    llm_server.for_model("cheap", verdict("PASS", 92))
    result = run(tiered(llm_server))
    assert result.decision == "PASS"
    assert llm_server.requests_for("strong") == []
    attempt = result.attempts[0]
    assert attempt.tiers == [0] and attempt.escalations == [] and attempt.not_asked == ["strong"]
    assert result.calls_saved == 1
    assert [v.validator for v in result.votes] == ["rules", "cheap"]
    assert "Not asked (1 call saved): strong" in render_quorum_log(result, 0)


def test_tier_1_is_asked_on_disagreement_and_the_reason_is_recorded(llm_server):
    llm_server.for_model("cheap", verdict("RETRY", 55, "Add retry handling"))
    llm_server.for_model("strong", verdict("PASS", 90))
    result = run(tiered(llm_server))
    attempt = result.attempts[0]
    assert attempt.tiers == [0, 1] and result.calls_saved == 0 and attempt.not_asked == []
    [why] = attempt.escalations
    assert why.tier == 1 and why.reason == "disagreement" and "cheap RETRY" in why.detail
    assert [(v.validator, v.tier, v.recommendation) for v in result.votes] == [
        ("rules", 0, "PASS"), ("cheap", 0, "RETRY"), ("strong", 1, "PASS")]
    assert result.decision == "PASS"  # 3 of 4 weight
    assert any(line.startswith("Escalated to tier 1: disagreement") for line in render_quorum_log(result, 0))


def test_tier_1_is_asked_when_tier_0_abstains_past_the_quorum_minimum(llm_server):
    llm_server.for_model("cheap", Reply(status=503))
    llm_server.for_model("strong", verdict("PASS", 90))
    result = run(tiered(llm_server))
    [why] = result.attempts[0].escalations
    assert why.reason == "abstentions" and "cheap" in why.detail
    assert result.decision == "PASS" and result.quorum_reached  # rules + strong: 3 of 4 weight answered


def test_tier_1_is_asked_when_tier_0_is_unsure(llm_server):
    llm_server.for_model("cheap", verdict("PASS", 90, confidence=0.1))
    llm_server.for_model("strong", verdict("PASS", 95))
    result = run(tiered(llm_server, escalate_below=0.7))
    [why] = result.attempts[0].escalations
    assert why.reason == "low_confidence" and "escalate below 70.0%" in why.detail
    assert len(llm_server.requests_for("strong")) == 1


def test_three_tiers_stop_at_the_first_decisive_one(llm_server):
    cfg = DispatchConfig.model_validate({"validators": {
        "a": model(llm_server, "a", 0), "b": model(llm_server, "b", 1), "c": model(llm_server, "c", 2)},
        "quorum": {"max_retries": 0}})
    # a's FAIL comes at 10% confidence (its score): unsure, so b is asked; a and b together, 12.5%: c is asked
    llm_server.for_model("a", verdict("FAIL", 10, "Wrong subject"))
    llm_server.for_model("b", verdict("FAIL", 15, "Wrong subject"))
    llm_server.for_model("c", verdict("FAIL", 5))
    result = run(cfg)
    assert [e.reason for e in result.attempts[0].escalations] == ["low_confidence", "low_confidence"]
    llm_server.requests.clear()
    llm_server.for_model("a", verdict("PASS", 95))
    result = run(cfg)
    assert result.attempts[0].not_asked == ["b", "c"] and result.calls_saved == 2
    assert [r.body["model"] for r in llm_server.requests] == ["a"]


def test_every_retry_escalates_afresh_and_the_savings_add_up(llm_server):
    cfg = tiered(llm_server, max_retries=1, backoff_base_s=0)
    llm_server.for_model("cheap", verdict("RETRY", 60, "Add tests"), verdict("RETRY", 60, "Add tests"))
    llm_server.for_model("strong", verdict("RETRY", 60, "Add tests"), verdict("RETRY", 60))
    result = run(cfg)
    assert [a.tiers for a in result.attempts] == [[0, 1], [0, 1]] and result.calls_saved == 0
    assert [e.reason for a in result.attempts for e in a.escalations] == ["disagreement", "disagreement"]


def test_all_in_tier_0_is_the_old_behaviour(llm_server):
    cfg = DispatchConfig.model_validate({"validators": {
        "rules": {"kind": "rules"}, "gpt": model(llm_server, "gpt", 0)}, "quorum": {"max_retries": 0}})
    llm_server.for_model("gpt", verdict("PASS", 90))
    result = run(cfg)
    assert result.attempts[0].tiers == [0] and result.calls_saved == 0 and result.attempts[0].escalations == []


# ------------------------------------------------------------ the deterministic veto
def test_a_deterministic_fail_is_never_outvoted_and_spares_the_models(llm_server):
    cyclic = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
        {**TASKS[0], "dependencies": ["adapter"]}, TASKS[1]]})
    cfg = DispatchConfig.model_validate({"validators": {
        "rules": {"kind": "rules", "weight": 0.5}, "gpt": model(llm_server, "gpt", 0, 5.0),
        "claude": model(llm_server, "claude", 1, 5.0)}, "quorum": {"max_retries": 0}})
    llm_server.fallback = verdict("PASS", 99)  # would outvote the rules 10 to 0.5
    result = run(cfg, request=cyclic)
    assert result.decision == "FAIL" and llm_server.requests == []
    assert result.attempts[0].not_asked == ["gpt", "claude"] and result.calls_saved == 2
    assert any("cycle" in d.lower() for d in result.deficiencies)


@VALIDATORS.register("test-always-pass")
class AlwaysPass(Validator):
    """A second deterministic check that passes everything."""

    deterministic = True

    def validate(self, request):
        return Verdict(recommendation="PASS", alignment_score=100, confidence=1.0)


def test_a_deterministic_fail_is_final_even_against_a_heavier_deterministic_pass():
    cyclic = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
        {**TASKS[0], "dependencies": ["adapter"]}, TASKS[1]]})
    cfg = DispatchConfig.model_validate({"validators": {
        "rules": {"kind": "rules"}, "yes": {"kind": "test-always-pass", "weight": 9}},
        "quorum": {"max_retries": 0}})
    result = run(cfg, request=cyclic)
    assert result.decision == "FAIL" and result.attempts[0].decision == "FAIL"
    assert 0 < result.confidence < 0.2  # the veto's own weight behind it: 1 of 10


# ------------------------------------------------------------ tokens and forms on votes
def test_votes_record_tokens_and_the_structured_output_form(llm_server):
    llm_server.for_model("cheap", Reply(text='{"alignment_score": 91, "recommendation": "PASS", '
                                             '"missing_requirements": []}', usage=(321, 45)))
    result = run(tiered(llm_server))
    cheap = result.votes[1]
    assert (cheap.input_tokens, cheap.output_tokens, cheap.json_mode) == (321, 45, "schema")
    assert result.votes[0].input_tokens is None  # rules call no model


# ------------------------------------------------------------ config
@pytest.mark.parametrize("validators,quorum,where", [
    ({"rules": {"kind": "rules", "tier": -1}}, {}, "validators.rules.tier"),
    ({"rules": {"kind": "rules", "tier": "high"}}, {}, "validators.rules.tier"),
    ({}, {"escalate_below": 2}, "quorum.escalate_below"),
    ({}, {"weights": "vibes"}, "quorum.weights"),
    ({}, {"learned_min_samples": 0}, "quorum.learned_min_samples"),
])
def test_bad_tier_and_weight_settings_are_config_errors(validators, quorum, where):
    cfg = DispatchConfig.model_validate({"validators": validators, "quorum": quorum})
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        run(cfg)


# ------------------------------------------------------------ keeping score
def vote(name, rec, kind="openai", tier=0, **extra):
    return ValidatorVote(validator=name, kind=kind, recommendation=rec, tier=tier, confidence=0.8, **extra)


def past_run(run_id, votes, decision, outcome, started):
    """A saved run: its final quorum attempt, then what its tasks did (``None``: they did not run)."""
    tasks = [TaskSpec.model_validate(t) for t in TASKS]
    result = QuorumResult(decision=decision, confidence=0.8, votes=votes,
                          attempts=[QuorumAttempt(attempt=1, decision=decision, confidence=0.8, votes=votes)],
                          breakdown_digest=breakdown_digest(tasks))
    state = PhaseState(run_id=run_id, quorum_result=result, tasks_data=tasks, started_at=started)
    if outcome == "edited":
        state.tasks_data = tasks[:1]  # a person changed the breakdown at the checkpoint after phase 1
    if outcome is not None:
        failed = outcome == "failed"
        state.task_results = [TaskResult(task_id="pool", agent="llm", success=True),
                              TaskResult(task_id="adapter", agent="llm", success=not failed)]
    return state


def history():
    """gpt says PASS to everything and is wrong half the time; claude is right every time."""
    runs = []
    for i in range(6):
        bad = i % 2 == 1
        runs.append(past_run(f"r{i}", [vote("rules", "PASS", kind="rules"), vote("gpt", "PASS"),
                                       vote("claude", "RETRY" if bad else "PASS", tier=1),
                                       vote("flaky", None, error="timed out")],
                             "PASS", "failed" if bad else "succeeded", f"2026-01-0{i + 1}T00:00:00.000Z"))
    runs.append(past_run("edited", [vote("gpt", "PASS"), vote("claude", "RETRY", tier=1)], "RETRY", "edited",
                         "2026-01-08T00:00:00.000Z"))
    runs.append(past_run("aborted", [vote("gpt", "FAIL"), vote("claude", "FAIL", tier=1)], "FAIL", None,
                         "2026-01-09T00:00:00.000Z"))
    runs.append(PhaseState(run_id="no-quorum"))
    return runs


def test_vote_records_pair_each_vote_with_the_runs_outcome():
    records = vote_records(history())
    edited = [r for r in records if r.run_id == "edited"]
    assert {r.outcome for r in edited} == {"edited"} and all(r.edited for r in edited)
    assert [r.borne_out for r in edited] == [False, True]  # PASS then edited; RETRY borne out
    aborted = [r for r in records if r.run_id == "aborted"]
    assert {r.outcome for r in aborted} == {None} and {r.borne_out for r in aborted} == {None}
    assert "no-quorum" not in {r.run_id for r in records}


def test_quorum_stats_per_validator():
    stats = quorum_stats(history())
    assert (stats.runs, stats.runs_with_outcome, stats.runs_failed, stats.runs_edited) == (8, 7, 3, 1)
    by = {v.validator: v for v in stats.validators}
    gpt, claude, flaky = by["gpt"], by["claude"], by["flaky"]
    assert (gpt.votes, gpt.pass_votes, gpt.fail_votes, gpt.abstentions) == (8, 7, 1, 0)
    assert gpt.passes_scored == 7 and gpt.passes_then_failed == 3
    assert gpt.pass_then_failed_rate == round(3 / 7, 4)
    assert gpt.agreed == 7 and gpt.agreement == round(7 / 8, 4)  # disagreed with the edited run's RETRY
    assert claude.passes_then_failed == 0 and claude.agreed == 5 and claude.tier == 1
    assert (flaky.votes, flaky.abstentions, flaky.agreement) == (0, 6, None)
    assert by["rules"].edited_after == 0 and gpt.edited_after == 1
    table = render_stats(stats)
    assert table[0].split()[:4] == ["validator", "kind", "tier", "votes"]
    gpt_line = next(line for line in table if line.split()[0] == "gpt")
    assert "43% (3/7)" in gpt_line and "88% (7/8)" in gpt_line
    assert stats_json(stats)["validators"][0]["validator"] == "rules"


def test_quorum_stats_of_no_runs_says_so():
    assert render_stats(quorum_stats([])) == [
        "No quorum votes recorded yet (runs with --enable-quorum record them)."]


def test_learned_weights_come_from_the_record_with_a_floor_and_a_minimum_sample(llm_server):
    validators = {"gpt": model(llm_server, "gpt", 0, 2.0), "claude": model(llm_server, "claude", 0),
                  "newcomer": model(llm_server, "newcomer", 0)}
    learned = DispatchConfig.model_validate({"validators": validators, "quorum": {
        "max_retries": 0, "weights": "learned", "learned_floor": 0.5, "learned_min_samples": 5}})
    configured = DispatchConfig.model_validate({"validators": validators, "quorum": {"max_retries": 0}})
    assert wants_history(learned) and not wants_history(configured)
    for _ in range(2):
        llm_server.for_model("gpt", verdict("PASS", 90))
        llm_server.for_model("claude", verdict("FAIL", 20, "Wrong subject"))
        llm_server.for_model("newcomer", Reply(status=503))
    plain = run(configured, history=history())
    assert plain.weights == "configured" and plain.decision == "PASS"  # gpt's 2 against claude's 1
    result = run(learned, history=history())
    assert result.weights == "learned"
    gpt, claude, newcomer = (result.weights_used[n] for n in ("gpt", "claude", "newcomer"))
    # gpt: PASS on 7 runs with an outcome, borne out on 3; the floor (0.5) beats its accuracy (0.43)
    assert gpt.source == "learned" and gpt.samples == 7 and gpt.accuracy == round(3 / 7, 4)
    assert gpt.weight == 1.0  # 2 x max(0.5, 0.43)
    assert claude.source == "learned" and claude.samples == 7 and claude.accuracy == 1.0 and claude.weight == 1.0
    assert newcomer.source == "configured" and newcomer.samples == 0 and newcomer.weight == 1.0
    assert {v.validator: v.weight for v in result.votes} == {"gpt": 1.0, "claude": 1.0, "newcomer": 1.0}
    assert result.decision == "FAIL"  # the record turned the vote: PASS now has half the answered weight


def test_the_floor_keeps_a_poor_validator_in_the_quorum(llm_server):
    always_wrong = [past_run(f"w{i}", [vote("gpt", "PASS")], "PASS", "failed", f"2026-02-0{i + 1}T00:00:00.000Z")
                    for i in range(5)]
    cfg = DispatchConfig.model_validate({"validators": {"gpt": model(llm_server, "gpt", 0, 2.0)},
                                         "quorum": {"max_retries": 0, "weights": "learned"}})
    llm_server.for_model("gpt", verdict("PASS", 90))
    result = run(cfg, history=always_wrong)
    assert result.weights_used["gpt"].accuracy == 0.0 and result.weights_used["gpt"].weight == 0.4  # 2 x 0.2


def test_configured_weights_are_reported_without_history(llm_server):
    llm_server.for_model("cheap", verdict("PASS", 92))
    result = run(tiered(llm_server, weights="learned"))  # no history passed: nothing to learn from
    assert result.weights == "configured"
    assert {n: w.weight for n, w in result.weights_used.items()} == {"rules": 1.0, "cheap": 1.0, "strong": 2.0}
