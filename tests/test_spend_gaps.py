"""The spend gaps of issue 15: a phase-1 quorum stopped between its rounds by the run's cap (a real local model
server, the CLI embedded, and ``resume`` with a raised cap), a transient failure's spend kept across its
retry, and the telemetry of a task read from its typed ``usage``."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest

from conftest import run_cli  # noqa: F401 - the ``cli`` fixture's home
from llm_server import FakeLLMServer, Reply, counted_answer

from dispatch.common.breaker import BreakerBoard
from dispatch.common.spend import SpendCap, cap_reached
from dispatch.config import BudgetOptions, DispatchConfig
from dispatch.models import DispatchInput, TaskResult, Usage

RETRY = json.dumps({"alignment_score": 50, "recommendation": "RETRY", "missing_requirements": ["tests"]})
PASS = json.dumps({"alignment_score": 95, "recommendation": "PASS", "missing_requirements": []})
TASKS = [{"task_id": "a", "agent": "writer", "description": "write the adapter"},
         {"task_id": "b", "agent": "writer", "description": "test the adapter", "dependencies": ["a"]}]


# ------------------------------------------------------------------ the cap check itself
def test_cap_reached_names_the_first_cap_spent():
    spent = Usage(input_tokens=90, output_tokens=10, cost_usd=0.5, calls=1)
    assert cap_reached(None, spent) is None
    assert cap_reached(BudgetOptions(max_tokens=101), spent) is None
    assert cap_reached(BudgetOptions(max_tokens=100), spent) == "max_tokens"
    assert cap_reached(BudgetOptions(max_cost_usd=0.5, max_tokens=100), spent) == "max_cost_usd"
    assert cap_reached(BudgetOptions(max_wall_s=10), spent, started=100.0, now=109.0) is None
    assert cap_reached(BudgetOptions(max_wall_s=10), spent, started=100.0, now=110.0) == "max_wall_s"
    before = SpendCap(BudgetOptions(max_tokens=150), spent_before=spent)
    assert before.reached(Usage(input_tokens=49)) is None and before.reached(Usage(input_tokens=50)) == "max_tokens"


# ------------------------------------------------------------------ the quorum, stopped between rounds
def quorum_config(server, **extra) -> DispatchConfig:
    return DispatchConfig.model_validate({
        "validators": {"v": {"kind": "openai", "model": "judge", "base_url": server.openai_base_url}},
        "planner": {"kind": "openai", "model": "plan", "base_url": server.openai_base_url}, **extra})


def quorum_under_cap(max_tokens: int) -> tuple[list[str], Any]:
    """A judge that asks for a retry, then passes; a planner that revises: the models asked, the result."""
    with FakeLLMServer() as server:
        server.for_model("judge", Reply(text=RETRY, usage=(300, 30)), Reply(text=PASS, usage=(300, 30)))
        server.for_model("plan", Reply(text=json.dumps({"tasks": TASKS}), usage=(500, 80)))
        request = DispatchInput(user_prompt="write and test the adapter", tasks=TASKS[:1])
        from dispatch.quorum import run_quorum
        result = run_quorum(request, quorum_config(server), sleep=lambda s: None, rng=random.Random(0),
                            breakers=BreakerBoard(), cap=SpendCap(BudgetOptions(max_tokens=max_tokens))).result
        return [r.body["model"] for r in server.requests], result


def test_a_spent_cap_stops_the_quorum_before_the_planner_and_the_retry():
    asked, result = quorum_under_cap(200)
    assert asked == ["judge"]  # no planner revision, no second attempt
    assert result.decision == "RETRY" and len(result.attempts) == 1 and result.usage.total_tokens == 330
    assert any(w.startswith("Budget: max_tokens reached (330 tokens spent so far): the quorum stopped asking")
               for w in result.warnings), result.warnings


def test_a_cap_not_reached_lets_the_quorum_go_on():
    asked, result = quorum_under_cap(10_000)
    assert asked == ["judge", "plan", "judge"] and result.decision == "PASS"
    assert not any(w.startswith("Budget:") for w in result.warnings)


def test_the_cap_counts_what_the_run_spent_before_the_quorum():
    with FakeLLMServer() as server:
        server.for_model("judge", Reply(text=RETRY, usage=(30, 3)), Reply(text=PASS, usage=(30, 3)))
        server.for_model("plan", Reply(text=json.dumps({"tasks": TASKS}), usage=(50, 8)))
        request = DispatchInput(user_prompt="write and test the adapter", tasks=TASKS[:1])
        from dispatch.quorum import run_quorum
        cap = SpendCap(BudgetOptions(max_tokens=1000), spent_before=Usage(input_tokens=980, calls=4))
        result = run_quorum(request, quorum_config(server), sleep=lambda s: None, rng=random.Random(0),
                            breakers=BreakerBoard(), cap=cap).result
        asked = [r.body["model"] for r in server.requests]
    assert asked == ["judge"] and "1.0k tokens spent so far" in " ".join(result.warnings)


def test_a_cap_stops_the_escalation_to_a_higher_tier():
    with FakeLLMServer() as server:
        # the cheap tier is unsure (RETRY at low confidence): without a cap the higher tier is asked
        server.for_model("cheap", Reply(text=RETRY, usage=(300, 30)))
        server.for_model("big", Reply(text=PASS, usage=(300, 30)))
        cfg = DispatchConfig.model_validate({
            "validators": {"cheap": {"kind": "openai", "model": "cheap", "base_url": server.openai_base_url},
                           "big": {"kind": "openai", "model": "big", "base_url": server.openai_base_url,
                                   "tier": 2}},
            "quorum": {"max_retries": 0}})
        request = DispatchInput(user_prompt="write the adapter", tasks=TASKS[:1])
        from dispatch.quorum import run_quorum
        result = run_quorum(request, cfg, sleep=lambda s: None, rng=random.Random(0), breakers=BreakerBoard(),
                            cap=SpendCap(BudgetOptions(max_tokens=100))).result
        asked = [r.body["model"] for r in server.requests]
    assert asked == ["cheap"] and result.attempts[0].not_asked == ["big"]


# ------------------------------------------------------------------ the same as a user meets it
@pytest.mark.timeout(180)
def test_a_quorum_stopped_by_the_cap_pauses_the_run_and_resume_goes_on(tmp_path, cli):
    with FakeLLMServer() as server:
        server.fallback = counted_answer("done")
        server.for_model("judge", Reply(text=RETRY, usage=(400, 40)))
        server.for_model("plan", Reply(text=json.dumps({"tasks": TASKS}), usage=(500, 80)))
        cfg = tmp_path / "dispatch.toml"
        cfg.write_text(f"""
[agents.writer]
kind = "llm"
provider = "openai"
model = "m1"
base_url = "{server.openai_base_url}"

[validators.judge]
kind = "openai"
model = "judge"
base_url = "{server.openai_base_url}"

[planner]
kind = "openai"
model = "plan"
base_url = "{server.openai_base_url}"

[budget]
max_tokens = 100
""")
        stdin = json.dumps({"user_prompt": "write and test the adapter", "tasks": TASKS})
        run = cli("--config", str(cfg), "--enable-quorum", stdin=stdin)
        assert run.returncode == 1, run.stderr
        out = run.json
        assert [r.body["model"] for r in server.requests] == ["judge"]  # stopped before planner and retry
        assert out["status"] == "paused" and out["pause_reason"] == "max_tokens 100 reached (440 tokens spent)"
        assert all(r["not_run"] for r in out["results"])
        assert "the quorum stopped asking" in run.stderr
        resumed = cli("resume", out["run_id"], "--max-tokens", "100000")
        assert resumed.returncode == 0, resumed.stderr
        again = resumed.json
        models = [r.body["model"] for r in server.requests]
    assert again["status"] == "succeeded" and all(r["success"] for r in again["results"])
    assert models.count("judge") == 1 and "plan" not in models and models.count("m1") == 2  # phase 1 not again


# ------------------------------------------------------------------ a transient failure's spend, kept
FLAKY = '''
import pathlib
from dispatch.agents.base import AgentOutcome
from dispatch.models import Usage

def flaky(task, context, deps):
    """Fails transiently once (after a model call that was paid for), then succeeds."""
    marker = pathlib.Path(task["input_data"]["marker"])
    if not marker.exists():
        marker.write_text("1")
        out = AgentOutcome.fail("upstream 503", transient=True)
        out.usage = Usage(input_tokens=100, output_tokens=10, calls=1, model="m1")
        return out
    out = AgentOutcome.ok("done")
    out.usage = Usage(input_tokens=50, output_tokens=5, calls=1, model="m1")
    return out
'''


@pytest.mark.timeout(120)
def test_a_retried_transient_failure_keeps_its_spend_in_the_task_and_the_run(tmp_path, cli):
    (tmp_path / "gaps_agents.py").write_text(FLAKY)
    cfg = tmp_path / "dispatch.toml"
    cfg.write_text('[agents.flaky]\nkind = "python"\ncallable = "gaps_agents:flaky"\n\n'
                   '[prices."m1"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n\n[budget]\nmax_tokens = 100000\n')
    stdin = json.dumps({"tasks": [{"task_id": "t", "agent": "flaky", "description": "flaky work",
                                   "input_data": {"marker": str(tmp_path / "called")}}]})
    run = cli("--config", str(cfg), stdin=stdin, extra_env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    result = run.json["results"][0]
    assert result["success"] and result["attempts"] == 2
    both = {"input_tokens": 150, "output_tokens": 15, "calls": 2, "model": "m1",
            "cost_usd": pytest.approx((150 * 2.0 + 15 * 8.0) / 1e6)}
    assert result["usage"] == both
    assert run.json["usage"]["total"] == both


# ------------------------------------------------------------------ a task killed at its hard time limit
def test_a_task_killed_at_its_hard_limit_counts_nothing_and_the_cap_still_pauses(tmp_path):
    import fakeredis
    from celery.exceptions import ChordError

    from dispatch.config import ComponentConfig, Settings
    from dispatch.models import PhaseState, RunConfig, TaskPlan, TaskSpec
    from dispatch.report.usage import run_usage
    from dispatch.runtime.control import close_broken_chord
    from dispatch.store import Deployment, OverBudget

    tasks = [TaskSpec(task_id=f"t{i}", agent="writer", description=str(i)) for i in range(3)]
    state = PhaseState(run_id="run", tasks_data=tasks, started_at="2026-01-01T00:00:00.000Z",
                       plan=TaskPlan(order=[t.task_id for t in tasks],
                                     agent_configs={"writer": ComponentConfig(kind="llm")}),
                       run_config=RunConfig(max_workers=2, budget=BudgetOptions(max_tokens=90,
                                                                                default_estimate_tokens=40)))
    deployment = Deployment(Settings(state_dir=str(tmp_path / "state")), fakeredis.FakeRedis())
    deployment.store.save(state)  # as phase 4 saves it before it starts the scheduler
    sched = deployment.scheduler("run")
    first = sched.start(state, {t.task_id: {} for t in tasks}, started=0.0)
    deployment.ledger("run").record({"cid-killed": f"agent:{first[1]}"})
    for tid in first:
        sched.prepare(tid)  # 2 x 40 reserved
    done = sched.finish(TaskResult(task_id=first[0], agent="writer", success=True,
                                   usage=Usage(input_tokens=30, calls=1)))
    assert done.spent_tokens == 30  # the scheduler's spend: what was spent, not what is still reserved
    [third] = done.task_ids
    with pytest.raises(OverBudget):
        sched.prepare(third)  # 30 spent + 40 still held by the killed task + its mean 30 > 90
    sched.finish(TaskResult(task_id=third, agent="writer", success=False, not_run=True,
                            error="not run: the run's max_tokens is reached"))
    # the second task's process is killed at its hard time limit: it never finishes, the chord breaks
    closed = close_broken_chord("run", deployment, ChordError("Dependency cid-killed raised TimeLimitExceeded(15)"))
    by_id = {r.task_id: r for r in closed.task_results}
    assert "hard time limit" in by_id[first[1]].error and by_id[first[1]].usage is None
    assert run_usage(closed).total.total_tokens == 30  # its reservation is not spend
    assert closed.phases_executed[-1].output_data["usage"]["input_tokens"] == 30
    # the cap that stopped the third task still pauses the run: resume runs it (and the killed one)
    assert closed.status == "paused" and closed.pause_reason == "max_tokens 90 reached (30 tokens spent)"
    assert by_id[third].not_run and not by_id[third].skipped
