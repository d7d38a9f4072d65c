"""Spend without servers: pricing, adding up, the budget config, and the reservation scripts on fakeredis."""
from __future__ import annotations

import math

import fakeredis
import pytest
from pydantic import ValidationError

from dispatch.common.spend import call_usage, cost_usd, describe, priced, total
from dispatch.config import BudgetOptions, ComponentConfig, DispatchConfig, Price
from dispatch.errors import UsageError
from dispatch.models import (PhaseState, QuorumAttempt, QuorumResult, RunConfig, TaskPlan, TaskResult, TaskSpec,
                             Usage, ValidatorVote)
from dispatch.pipeline.execution import close_execution
from dispatch.pipeline.spend import budget_plan, raise_caps, resume_hint
from dispatch.report.usage import run_usage
from dispatch.store.scheduler import DagScheduler, OverBudget

PRICES = {"m1": Price(input_per_mtok=3.0, output_per_mtok=15.0)}


# ------------------------------------------------------------------ pricing
def test_cost_from_the_price_table_and_none_without_a_price():
    assert cost_usd("m1", 1_000_000, 0, PRICES) == 3.0
    assert cost_usd("m1", 2000, 1000, PRICES) == pytest.approx(0.006 + 0.015)
    assert cost_usd("other", 2000, 1000, PRICES) is None
    unknown = call_usage("other", 10, 5, PRICES)
    assert unknown.cost_usd is None and unknown.total_tokens == 15 and unknown.calls == 1


def test_a_reported_cost_wins_over_the_table():
    reported = Usage(input_tokens=1000, output_tokens=0, cost_usd=0.5, calls=1, model="m1")
    assert priced(reported, PRICES).cost_usd == 0.5
    assert priced(reported.model_copy(update={"cost_usd": None}), PRICES).cost_usd == pytest.approx(0.003)


def test_usages_add_up_keeping_known_costs_and_the_one_model():
    a = call_usage("m1", 1000, 100, PRICES)
    b = call_usage("m1", 500, 50, PRICES)
    c = call_usage("x", 10, 1, PRICES)
    ab = a + b
    assert (ab.input_tokens, ab.output_tokens, ab.calls, ab.model) == (1500, 150, 2, "m1")
    assert ab.cost_usd == pytest.approx(a.cost_usd + b.cost_usd)
    abc = total([a, None, b, c])
    assert abc.model is None and abc.calls == 3 and abc.cost_usd == pytest.approx(ab.cost_usd)
    assert total([]) == Usage() and total([c]).cost_usd is None


def test_describe_is_the_log_form_and_empty_without_calls():
    assert describe(Usage(input_tokens=18000, output_tokens=300, cost_usd=0.0421, calls=3)) == "~$0.042, 18.3k tokens"
    assert describe(Usage(input_tokens=40, output_tokens=2, calls=1)) == "42 tokens"
    assert describe(Usage()) == "" and describe(None) == ""


# ------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [{"budget": {"max_tokens": True}}, {"budget": {"max_cost_usd": -1}},
                                 {"budget": {"max_cost_usd": "5"}}, {"budget": {"max_wall_s": math.inf}},
                                 {"budget": {"max_tokns": 5}},
                                 {"prices": {"m": {"input_per_mtok": 1}}},
                                 {"prices": {"m": {"input_per_mtok": 1, "output_per_mtok": math.nan}}}])
def test_budget_and_prices_are_strict(bad):
    with pytest.raises(ValidationError):
        DispatchConfig.model_validate(bad)


def test_the_input_budget_wins_key_by_key_and_resume_raises_a_cap():
    state = PhaseState(run_id="r", config=DispatchConfig(budget=BudgetOptions(max_tokens=100, max_cost_usd=1.0)),
                       run_config=RunConfig(budget=BudgetOptions(max_tokens=50)))
    plan = budget_plan(state, {})
    assert plan.token_cap == 50 and plan.cost_cap == 1_000_000_000
    assert raise_caps(state, max_tokens=500) == ["max_tokens = 500"]
    assert budget_plan(state, {}).token_cap == 500
    with pytest.raises(UsageError, match="--max-cost-usd"):
        raise_caps(state, max_cost_usd=math.nan)
    assert budget_plan(PhaseState(run_id="r"), {}) is None  # no cap: nothing is counted


# --------------------------------------------------------------- aggregation
def test_run_usage_by_phase_agent_and_model():
    vote = ValidatorVote(validator="v1", kind="openai", recommendation="PASS",
                         usage=call_usage("m1", 100, 10, PRICES))
    quorum = QuorumResult(decision="PASS", confidence=1.0, votes=[vote],
                          attempts=[QuorumAttempt(attempt=1, decision="PASS", confidence=1.0, votes=[vote])],
                          planner_usage=call_usage("m2", 50, 50, PRICES))
    results = [TaskResult(task_id="a", agent="writer", success=True, usage=call_usage("m1", 1000, 100, PRICES)),
               TaskResult(task_id="b", agent="coder", success=True,
                          usage=Usage(input_tokens=7, output_tokens=3, cost_usd=0.25, calls=2)),
               TaskResult(task_id="c", agent="echo", success=True)]
    usage = run_usage(PhaseState(run_id="r", quorum_result=quorum, task_results=results))
    assert usage.total.total_tokens == 110 + 100 + 1100 + 10 and usage.total.calls == 5
    assert set(usage.phases) == {"QUORUM_VALIDATION", "PARALLEL_EXECUTION"}
    assert usage.phases["QUORUM_VALIDATION"].total_tokens == 210
    assert set(usage.agents) == {"validator:v1", "planner", "writer", "coder"}
    assert usage.models["m1"].total_tokens == 1210 and usage.models["unknown"].cost_usd == 0.25
    assert usage.total.cost_usd == pytest.approx(vote.usage.cost_usd + results[0].usage.cost_usd + 0.25)
    assert run_usage(PhaseState(run_id="r", task_results=[results[2]])) is None


# --------------------------------------------------------------- reservations
def capped_state(n: int, max_workers: int, agent_options=None, **budget) -> PhaseState:
    tasks = [TaskSpec(task_id=f"t{i}", agent="writer", description=str(i)) for i in range(n)]
    plan = TaskPlan(order=[t.task_id for t in tasks],
                    agent_configs={"writer": ComponentConfig(kind="llm", **(agent_options or {}))})
    return PhaseState(run_id="run", tasks_data=tasks, plan=plan, started_at="2026-01-01T00:00:00.000Z",
                      run_config=RunConfig(max_workers=max_workers, budget=BudgetOptions(**budget)))


def spent(tokens: int, cost: float = 0.0) -> Usage:
    return Usage(input_tokens=tokens, cost_usd=cost, calls=1)


def test_reservations_stop_starts_at_the_cap_and_finish_reconciles():
    state = capped_state(6, 6, max_tokens=100, default_estimate_tokens=30)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    first = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0)
    assert len(first) == 6  # six slots: all sent at once
    for tid in first[:3]:
        sched.prepare(tid)  # 3 x 30 reserved = 90
    with pytest.raises(OverBudget) as refused:
        sched.prepare(first[3])  # 90 + 30 > 100
    assert refused.value.cap == "max_tokens" and sched.paused() == "max_tokens"
    with pytest.raises(OverBudget) as refused:
        sched.prepare(first[4])  # paused: nothing else starts, whatever its estimate
    assert refused.value.agent == "writer"
    done = sched.finish(TaskResult(task_id=first[0], agent="writer", success=True, usage=spent(20)))
    assert done.spent_tokens == 20 and done.sends == []
    assert sched.client.hget(sched.key("spent"), "held_tokens") == b"60"
    sched.prepare(first[1])  # a retry of a started task keeps its reservation: not refused
    assert sched.client.hget(sched.key("spent"), "held_tokens") == b"60"


def test_the_estimate_is_the_agents_own_else_the_mean_of_its_finished_tasks():
    state = capped_state(4, 1, max_tokens=100)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    [tid] = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0)
    sched.prepare(tid)  # no default estimate: 0 reserved, it starts while under the cap
    [nxt] = sched.finish(TaskResult(task_id=tid, agent="writer", success=True, usage=spent(60))).task_ids
    with pytest.raises(OverBudget):
        sched.prepare(nxt)  # the writer's mean is 60: 60 + 60 > 100
    # an agent's own estimated_cost_usd is what its tasks reserve against a cost cap
    state = capped_state(3, 3, {"estimated_cost_usd": 0.4}, max_cost_usd=1.0)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run2")
    first = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0)
    sched.prepare(first[0])
    sched.prepare(first[1])
    with pytest.raises(OverBudget) as refused:
        sched.prepare(first[2])
    assert refused.value.cap == "max_cost_usd"


def test_a_cap_spent_before_phase_4_starts_nothing_and_the_run_pauses():
    state = capped_state(3, 3, max_tokens=100)
    state.quorum_result = QuorumResult(decision="PASS", confidence=1.0, usage=spent(150))
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    assert sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0) == []
    assert sched.paused() == "max_tokens" and sched.quiet()
    close_execution(state, sched.results(), 0.0, paused=sched.paused())
    assert state.status == "paused" and state.pause_reason == "max_tokens 100 reached (150 tokens spent)"
    assert all(r.not_run and not r.skipped and not r.success for r in state.task_results)
    assert resume_hint(state) == "resume run --max-tokens 1000"


def test_paused_closing_keeps_finished_results_and_reports_the_rest_not_run():
    state = capped_state(2, 1, max_tokens=10)
    state.tasks_data.append(TaskSpec(task_id="child", agent="writer", description="c", dependencies=["t1"]))
    state.plan.order.append("child")
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    [tid] = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0)
    assert tid == "t1"  # on the longest path
    sched.prepare(tid)
    assert sched.finish(TaskResult(task_id=tid, agent="writer", success=True, usage=spent(12))).sends == []
    assert sched.paused() == "max_tokens" and sched.quiet()  # one task still waits, but cannot start
    close_execution(state, sched.results(), 0.0, paused=sched.paused())
    by_id = {r.task_id: r for r in state.task_results}
    assert by_id[tid].success
    assert by_id["t0"].not_run and by_id["child"].not_run and "max_tokens 10 reached" in by_id["child"].error
    assert state.phases_executed[-1].output_data["not_run"] == 2


# ------------------------------------------------------------------ report
def test_the_html_report_has_a_spend_section():
    from dispatch.report.html import render_html

    state = PhaseState(run_id="r", status="paused", pause_reason="max_tokens 100 reached (120 tokens spent)",
                       tasks_data=[TaskSpec(task_id=t, agent="writer", description=t) for t in ("a", "b")],
                       task_results=[TaskResult(task_id="a", agent="writer", success=True,
                                                usage=call_usage("m1", 100, 20, PRICES)),
                                     TaskResult(task_id="b", agent="writer", success=False, not_run=True,
                                                error="not run: max_tokens 100 reached")])
    page = render_html(state)
    spend = page.split('<section id="spend">', 1)[1].split("</section>", 1)[0]
    assert "max_tokens 100 reached (120 tokens spent)" in spend and "1 task not run" in spend
    assert "$0.0006" in spend and "<code>PARALLEL_EXECUTION</code>" in spend and "<code>m1</code>" in spend
    empty = render_html(PhaseState(run_id="e")).split('<section id="spend">', 1)[1]
    assert empty.startswith("<h2>Spend</h2><p class=\"empty\">No model was called.")


def test_an_interactive_checkpoint_shows_spend_so_far():
    from dispatch.cli.interactive.view import checkpoint_lines

    vote = ValidatorVote(validator="v1", kind="openai", recommendation="PASS",
                         usage=call_usage("m1", 1000, 200, PRICES))
    state = PhaseState(run_id="r", quorum_result=QuorumResult(decision="PASS", confidence=0.9, votes=[vote]),
                       config=DispatchConfig(budget=BudgetOptions(max_tokens=5000)))
    assert "Spent so far: ~$0.006, 1.2k tokens (budget: max_tokens 5000)" in checkpoint_lines("after", 1, state)
    assert not any("Spent" in line for line in checkpoint_lines("after", 1, PhaseState(run_id="r")))


def test_the_progress_line_carries_spend_so_far():
    import io

    from dispatch.cli.progress import Progress
    from dispatch.models import ExecutionPhase

    line = Progress.render(ExecutionPhase.PARALLEL_EXECUTION, 3.0, (4, 10), bar=False, spent="~$0.010, 1.2k tokens")
    assert line.endswith("4/10 tasks finished (40%), 3s elapsed, spent ~$0.010, 1.2k tokens")
    assert "spent" not in Progress.render(ExecutionPhase.PARALLEL_EXECUTION, 3.0, (4, 10), bar=False)
    bar = Progress(io.StringIO(), live=False)
    bar.start(ExecutionPhase.PARALLEL_EXECUTION)
    bar.spent = "42 tokens"
    assert Progress.fit(ExecutionPhase.PARALLEL_EXECUTION, 1.0, (1, 2), 200, bar.spent).endswith("spent 42 tokens")


# ------------------------------------------------------------------ agents
def test_a_coding_cli_reports_its_own_tokens_and_cost():
    from dispatch.agents.coding.base import reported_usage
    from dispatch.models import CodingReport

    report = CodingReport(agent="c", cli="claude_code", success=True, turns=3, tokens_in=610, tokens_out=72,
                          cost_usd=0.0123)
    usage = priced(reported_usage(report, "m1"), PRICES)
    assert (usage.input_tokens, usage.output_tokens, usage.calls, usage.model) == (610, 72, 3, "m1")
    assert usage.cost_usd == 0.0123  # the CLI's own bill wins over [prices]
    tokens_only = priced(reported_usage(report.model_copy(update={"cost_usd": None}), "m1"), PRICES)
    assert tokens_only.cost_usd == pytest.approx((610 * 3 + 72 * 15) / 1e6)
    assert reported_usage(CodingReport(agent="c", cli="gemini", success=True), None) is None  # never a guessed 0


def test_an_llm_agent_records_every_call_and_stops_repairing_at_its_task_cap():
    from llm_server import FakeLLMServer, Reply

    from dispatch.agents import build_agent, run_agent
    from dispatch.agents.base import AgentInvocation

    schema = {"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}}
    with FakeLLMServer() as server:
        agent = build_agent("writer", ComponentConfig(kind="llm", provider="openai", model="m1", output_schema=schema,
                                                      base_url=server.openai_base_url, schema_repairs=3))
        task = TaskSpec(task_id="t", agent="writer", description="d")

        def invocation(cap=None):
            return AgentInvocation(task=task, context=None, dependency_outputs={}, user_prompt="", workspace_path=".",
                                   run_id="r", attempt=1, timeout_s=10, prices=PRICES, max_cost_usd=cap)

        server.openai(Reply(text="not json", usage=(1000, 100)), Reply(text='{"code": "x"}', usage=(1200, 50)))
        repaired = run_agent(agent, invocation())
        assert repaired.success and repaired.usage.calls == 2
        assert (repaired.usage.input_tokens, repaired.usage.output_tokens) == (2200, 150) == tuple(server.tokens_sent)
        assert repaired.usage.cost_usd == pytest.approx((2200 * 3 + 150 * 15) / 1e6)
        server.openai(Reply(text="not json", usage=(1000, 100)), Reply(text='{"code": "x"}'))
        capped = run_agent(agent, invocation(cap=0.001))  # the first call costs $0.0045: no repair asked
        assert not capped.success and "cost cap" in capped.error and capped.usage.calls == 1
        assert len(server.requests) == 3


def test_every_budget_key_expires():
    client = fakeredis.FakeRedis()
    state = capped_state(3, 2, max_tokens=50, default_estimate_tokens=30)
    sched = DagScheduler(client, "t", "run", ttl_s=600)
    first = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0)
    sched.prepare(first[0])
    with pytest.raises(OverBudget):
        sched.prepare(first[1])
    assert 0 < client.ttl(sched.key("reserved")) <= 600  # (emptied, so gone, when its task finishes)
    sched.finish(TaskResult(task_id=first[0], agent="writer", success=True, usage=spent(20)))
    written = [k for k in client.keys("t:dag:run:*")]
    assert {b"t:dag:run:" + n for n in (b"budget", b"spent", b"estimates", b"agent_spend",
                                         b"paused")} <= set(written)
    assert all(0 < client.ttl(k) <= 600 for k in written), {k: client.ttl(k) for k in written}


def test_a_resumed_run_estimates_from_the_results_it_kept():
    state = capped_state(3, 1, max_tokens=100)
    kept = {"t0": TaskResult(task_id="t0", agent="writer", success=True, usage=spent(40))}
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    [tid] = sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0, finished=kept)
    sched.prepare(tid)  # 40 spent + 40 (the writer's mean) reserved
    with pytest.raises(OverBudget):  # a second start would make 120
        sched.prepare(sched.finish(TaskResult(task_id=tid, agent="writer", success=True,
                                              usage=spent(30))).task_ids[0])


def test_the_wall_cap_counts_from_the_run_start():
    state = capped_state(2, 2, max_wall_s=60)  # started 2026-01-01: long past
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    assert sched.start(state, {t.task_id: {} for t in state.tasks_data}, started=0.0) == []
    assert sched.paused() == "max_wall_s"
    close_execution(state, sched.results(), 0.0, paused=sched.paused())
    assert state.pause_reason.startswith("max_wall_s 60s reached (") and "s elapsed)" in state.pause_reason
    assert resume_hint(state).startswith("resume run --max-wall-s ")


# ------------------------------------------------------------------ quorum
def test_phase_1_counts_every_vote_of_every_attempt_and_the_planner():
    import json as _json
    import random

    from llm_server import FakeLLMServer, Reply

    from dispatch.common.breaker import BreakerBoard
    from dispatch.models import DispatchInput
    from dispatch.quorum import run_quorum

    tasks = [{"task_id": "a", "agent": "echo", "description": "write the adapter"},
             {"task_id": "b", "agent": "echo", "description": "test the adapter", "dependencies": ["a"]}]
    retry = _json.dumps({"alignment_score": 50, "recommendation": "RETRY", "missing_requirements": ["tests"]})
    ok = _json.dumps({"alignment_score": 95, "recommendation": "PASS", "missing_requirements": []})
    with FakeLLMServer() as server:
        server.for_model("m1", Reply(text=retry, usage=(300, 30)), Reply(text=ok, usage=(310, 20)))
        server.for_model("plan", Reply(text=_json.dumps({"tasks": tasks}), usage=(500, 80)))
        cfg = DispatchConfig.model_validate({
            "validators": {"v": {"kind": "openai", "model": "m1", "base_url": server.openai_base_url}},
            "planner": {"kind": "openai", "model": "plan", "base_url": server.openai_base_url},
            "prices": {"m1": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}}})
        request = DispatchInput(user_prompt="write and test the adapter", tasks=tasks[:1])
        result = run_quorum(request, cfg, sleep=lambda s: None, rng=random.Random(0), breakers=BreakerBoard()).result
    assert result.decision == "PASS" and len(result.attempts) == 2
    assert result.planner_usage.total_tokens == 580 and result.planner_usage.cost_usd is None  # no price: null
    assert result.usage.total_tokens == 330 + 330 + 580 and result.usage.calls == 3
    assert result.usage.cost_usd == pytest.approx((610 * 3 + 50 * 15) / 1e6)  # the priced calls only
    assert all(v.usage.model == "m1" for a in result.attempts for v in a.votes)


def test_phase_4_progress_meta_carries_spend_so_far():
    import json as _json
    from types import SimpleNamespace

    from dispatch.store.scheduler import Completion
    from dispatch.tasks.agents import report_phase_progress

    stored = []
    task = SimpleNamespace(backend=SimpleNamespace(store_result=lambda *args: stored.append(args)))
    target = _json.dumps({"task_id": "phase-4-id", "total": 10})
    report_phase_progress(task, "r", Completion(3, progress_target=target, spent_cost=0.0125, spent_tokens=1800))
    report_phase_progress(task, "r", Completion(4, progress_target=target))
    assert stored[0] == ("phase-4-id", {"run_id": "r", "phase": "PARALLEL_EXECUTION", "done": 3, "total": 10,
                                        "cost_usd": 0.0125, "tokens": 1800}, "PROGRESS")
    assert "tokens" not in stored[1][1]  # nothing spent: the meta is as before
