"""Run control without Celery: the ledger, cancel and resume against a plain (fake) Redis."""
from __future__ import annotations

import json
import time

import fakeredis
import pytest

from dispatch.config import DispatchConfig, Settings
from dispatch.errors import UsageError
from dispatch.models import ExecutionPhase, PhaseConfig, PhaseResult, PhaseState, TaskResult, TaskSpec
from dispatch.pipeline.prepare import remaining_phases, resume_state
from dispatch.runtime.control import cancel_run, close_phase_4
from dispatch.store import Deployment, Keys, RunLedger
from dispatch.store.scheduler import DagScheduler
from dispatch.store.state import RedisStateStore

SETTINGS = Settings(broker_url="redis://x/0", key_prefix="ops", state_ttl_s=600)


def done(phase: ExecutionPhase, success: bool = True, **kw) -> PhaseResult:
    return PhaseResult(phase=phase, phase_name=phase.title, success=success, duration_ms=5.0, **kw)


def make_state(run_id: str = "r1", completed=(2, 3), status: str = "failed", **cfg) -> PhaseState:
    state = PhaseState(run_id=run_id, status=status, user_prompt="p", phase_config=PhaseConfig(**cfg),
                       selected_phases=[2, 3, 4], started_at="2026-01-01T00:00:00.000Z",
                       tasks_data=[TaskSpec(task_id="a", agent="echo", description="first"),
                                   TaskSpec(task_id="b", agent="echo", description="second", dependencies=["a"]),
                                   TaskSpec(task_id="c", agent="echo", description="third")])
    for n in (0, 1):
        if not cfg.get(("enable_context", "enable_quorum")[n]):
            state.record(PhaseResult.skipped_result(ExecutionPhase.of(n), "not enabled"))
    for n in completed:
        state.record(done(ExecutionPhase.of(n)))
    return state


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def deployment(client, store) -> Deployment:
    d = Deployment(SETTINGS, client)
    d.__dict__["store"] = store  # the cached_property, pinned to the test's store
    return d


@pytest.fixture
def store(client):
    return RedisStateStore(client, SETTINGS.key_prefix, SETTINGS.state_ttl_s)


def test_ledger_records_ids_with_the_state_ttl(client):
    ledger = RunLedger(client, Keys("ops"), "r1", 600)
    ledger.record({"id-1": "phase_2", "id-2": "agent:a"})
    ledger.record({})
    ledger.start_phase_4("p4", 3, {"a": 30.0, "b": 5.0})
    assert ledger.tasks() == {"id-1": "phase_2", "id-2": "agent:a"}
    assert RunLedger.parse_target(client.get(ledger.progress_key)) == ("p4", 3)
    assert client.hget(ledger.limits_key, "b") == b"5.0"
    for key in (ledger.key, ledger.progress_key, ledger.limits_key):
        assert 0 < client.ttl(key) <= 600


def test_cancel_before_phase_4_revokes_recorded_ids_and_marks_the_run(client, store):
    store.save(make_state(status="running", completed=(2,)))
    RunLedger(client, Keys("ops"), "r1", 600).record({"p2": "phase_2", "p3": "phase_3", "p4": "phase_4"})
    revoked: list[list[str]] = []
    outcome = cancel_run("r1", deployment(client, store), revoked.append)
    assert revoked == [["p2", "p3", "p4"]]
    assert (outcome.previous_status, outcome.status, outcome.revoked) == ("running", "cancelled", 3)
    assert store.load("r1").status == "cancelled"
    assert client.get("ops:cancel:r1") == b"1" and 0 < client.ttl("ops:cancel:r1") <= 600
    # idempotent: a second cancel revokes again and changes nothing else
    assert cancel_run("r1", deployment(client, store), revoked.append).previous_status == "cancelled"
    assert store.load("r1").status == "cancelled"


def test_cancel_during_phase_4_keeps_finished_results_and_lets_dag_keys_expire(client, store):
    state = make_state(status="running")
    store.save(state)
    scheduler = DagScheduler(client, "ops", "r1", ttl_s=10_000)
    assert sorted(scheduler.start(state, {}, started=time.time())) == ["a", "c"]
    scheduler.finish(TaskResult(task_id="c", agent="echo", success=True, output="ok")).task_ids
    client.persist(scheduler.key("ready"))  # as if re-created by a completion: no TTL of its own
    outcome = cancel_run("r1", deployment(client, store), lambda ids: None)
    saved = store.load("r1")
    assert outcome.finished_tasks == 1 and saved.status == "cancelled"
    by_id = {r.task_id: r for r in saved.task_results}
    assert by_id["c"].success and by_id["a"].skipped and by_id["b"].skipped
    phase_4 = saved.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    assert not phase_4.success and phase_4.error.startswith("cancelled (1 of 3 tasks had finished)")
    for key in scheduler.keys.values():
        assert client.ttl(key) in (-2,) or 0 < client.ttl(key) <= SETTINGS.state_ttl_s, key


def test_a_close_racing_anothers_retire_sees_the_records_whole_or_not_at_all(client, store, monkeypatch):
    """A stopped embedded run is closed by the CLI while the executor may close it too: a ``retire`` landing
    between the close's reads left a state without its results, and finished tasks reported as never run."""
    state = make_state(status="running")
    store.save(state)
    scheduler = DagScheduler(client, "ops", "r1", ttl_s=10_000)
    scheduler.start(state, {}, started=time.time())
    scheduler.finish(TaskResult(task_id="c", agent="echo", success=True, output="ok"))
    deploy = deployment(client, store)
    real_pipeline = client.pipeline

    def pipeline(*args, **kwargs):  # the other closer's retire runs right before this close's reads
        monkeypatch.setattr(client, "pipeline", real_pipeline)
        deploy.retire("r1")
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", pipeline)
    assert close_phase_4("r1", deploy, cancel_seen=True) is None  # nothing half: the run was closed already
    scheduler.start(state, {}, started=time.time())
    scheduler.finish(TaskResult(task_id="c", agent="echo", success=True, output="ok"))
    closed = close_phase_4("r1", deploy, cancel_seen=True)
    assert {r.task_id: r.success for r in closed.task_results}["c"] is True


def test_cancel_refuses_finished_and_unknown_runs(client, store):
    store.save(make_state(status="succeeded", completed=(2, 3, 4)))
    with pytest.raises(UsageError, match="already succeeded: nothing to cancel"):
        cancel_run("r1", deployment(client, store), lambda ids: None)
    with pytest.raises(UsageError, match="no run 'nope'"):
        cancel_run("nope", deployment(client, store), lambda ids: None)
    assert not client.exists("ops:cancel:r1")


@pytest.mark.parametrize("completed, cfg, skip, expected", [
    ((2, 3), {}, [], [4]),                                          # phase 4 failed or never ran
    ((2,), {}, [], [3, 4]),
    ((), {"enable_context": True}, [], [0, 2, 3, 4]),
    ((0, 2, 3), {"enable_context": True}, [], [4]),
    ((2, 3), {"enable_context": True}, [], [4]),                    # phase 0 failed, non-critical: not re-run
    ((0,), {"enable_context": True, "enable_quorum": True}, [], [1, 2, 3, 4]),   # quorum FAIL: re-validate
    ((0,), {"enable_context": True, "enable_quorum": True}, [1], [2, 3, 4]),
    ((2, 3, 4), {}, [], []),
])
def test_remaining_phases_follow_the_last_completed_one(completed, cfg, skip, expected):
    assert remaining_phases(make_state(completed=completed, **cfg), skip) == expected


def test_resume_state_keeps_the_run_id_and_everything_saved():
    stored = make_state(completed=(0, 2, 3), enable_context=True)
    stored.global_context = None
    stored.record(done(ExecutionPhase.PARALLEL_EXECUTION, success=False, error="1 failed"))
    stored.task_results = [TaskResult(task_id="a", agent="echo", success=False, error="boom")]
    state = resume_state(stored, [], None).state
    assert state.run_id == "r1" and state.selected_phases == [4] and state.status == "pending"
    assert state.started_at == stored.started_at
    for n in (0, 2, 3):
        assert state.result_for(ExecutionPhase.of(n)) == stored.result_for(ExecutionPhase.of(n))
    assert state.config == DispatchConfig()


def test_resume_keeps_a_failed_phase_0_result_when_it_is_not_re_run():
    stored = make_state(completed=(2,), enable_context=True)
    stored.record(done(ExecutionPhase.CONTEXT_GATHERING, success=False, error="retriever down"))
    state = resume_state(stored, [], None).state
    assert state.selected_phases == [3, 4]
    assert state.result_for(ExecutionPhase.CONTEXT_GATHERING).error == "retriever down"


def test_resume_refuses_active_runs_without_force_and_runs_with_nothing_left():
    with pytest.raises(UsageError, match="is running .*dispatch cancel r1.*--force"):
        resume_state(make_state(status="running"), [], None)
    assert resume_state(make_state(status="running"), [], None, force=True).state.selected_phases == [4]
    with pytest.raises(UsageError, match="no phase left to run"):
        resume_state(make_state(status="succeeded", completed=(2, 3, 4)), [], None)
    with pytest.raises(UsageError, match="phases are numbered 0-4"):
        resume_state(make_state(), [7], None)


def test_embedded_stop_after_3_then_resume_by_id_runs_phase_4_under_the_same_id(cli):
    tasks = json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "first"},
                                  {"task_id": "b", "agent": "echo", "description": "then", "dependencies": ["a"]}]})
    first = cli("--stop-after-phase", "3", stdin=tasks)
    assert first.returncode == 0, first.stderr
    run_id = first.json["run_id"]
    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.json
    assert out["run_id"] == run_id and out["status"] == "succeeded"
    assert [r["task_id"] for r in out["results"]] == ["a", "b"] and all(r["success"] for r in out["results"])
    assert f"Resuming run {run_id} with phases 4" in resumed.stderr
    timing = {p["phase"]: p for p in out["timing_summary"]["phases"]}
    assert timing["TASK_PLANNING"]["skipped"] and not timing["PARALLEL_EXECUTION"]["skipped"]
    shown = cli("show", "--json", run_id).json
    planning = [r for r in shown["phases_executed"] if r["phase"] == "TASK_PLANNING"]
    assert shown["status"] == "succeeded" and not planning[0]["skipped"] and planning[0]["duration_ms"] > 0
    again = cli("resume", run_id)
    assert again.returncode == 2 and "no phase left to run" in again.stderr and again.stdout == ""
    missing = cli("resume", "20990101-000000-deadbeef")
    assert missing.returncode == 2 and "no run '20990101-000000-deadbeef'" in missing.stderr


def test_every_key_a_run_writes_expires(client, store):
    """Abandoned runs (a crashed client, a cancelled chord) must not leave keys behind forever."""
    state = make_state(status="running")
    state.tasks_data[2].dependencies = ["a"]  # a, then b and c
    state.run_config.max_workers = 1
    store.save(state)
    scheduler = DagScheduler(client, "ops", "r1", ttl_s=600)
    RunLedger(client, Keys("ops"), "r1", 600).start_phase_4("p4", 3, {"a": 1.0})

    def check() -> None:
        for key in client.keys("*"):
            assert 0 < client.ttl(key) <= 600, f"{key!r} never expires"

    assert scheduler.start(state, {t.task_id: {"n": 1} for t in state.tasks_data}, started=time.time()) == ["a"]
    check()
    # the ready set emptied when "a" started; completing "a" re-creates it with "c" left waiting for a slot
    assert scheduler.finish(TaskResult(task_id="a", agent="echo", success=True)).task_ids == ["b"]
    assert client.zrange(scheduler.key("ready"), 0, -1) == [b"c"]
    check()
    cancel_run("r1", deployment(client, store), lambda ids: None)
    check()


def test_embedded_cancel_is_refused_with_the_way_out(cli):
    refused = cli("cancel", "20260101-000000-abcdef12")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "cancel needs a broker (DISPATCH_BROKER_URL)" in refused.stderr and "Ctrl-C" in refused.stderr


def test_resume_after_a_failed_task_runs_only_what_did_not_succeed(cli, tmp_path):
    """The flaky task fails once; resume re-runs it and its dependent, never the task that succeeded."""
    marker, runs = tmp_path / "tried", tmp_path / "runs.log"
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {
        "once": {"kind": "shell", "command": ["sh", "-c", f"echo $DISPATCH_TASK_ID >> {runs}; true"]},
        "flaky": {"kind": "shell", "command": [
            "sh", "-c", f"echo $DISPATCH_TASK_ID >> {runs}; test -f {marker} || {{ touch {marker}; exit 3; }}"]}}}))
    tasks = json.dumps({"user_prompt": "p", "tasks": [
        {"task_id": "a", "agent": "once", "description": "first"},
        {"task_id": "b", "agent": "flaky", "description": "flaky", "dependencies": ["a"]},
        {"task_id": "c", "agent": "once", "description": "last", "dependencies": ["b"]}]})
    first = cli("--config", str(config), stdin=tasks)
    assert first.returncode == 1
    assert [r["success"] for r in first.json["results"]] == [True, False, False]
    run_id = first.json["run_id"]
    resumed = cli("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json["run_id"] == run_id and all(r["success"] for r in resumed.json["results"])
    assert resumed.json["results"][0]["started_at"] == first.json["results"][0]["started_at"]
    assert runs.read_text().split() == ["a", "b", "b", "c"]
    assert "Keeping 1 succeeded task result(s)" in resumed.stderr
