"""Scale, fast parts: the streamed result document, the results-file cursor, compacted states, a closed
run's keys (fakeredis, no Celery)."""
import io
import json
import zlib

import fakeredis
import pytest

from dispatch.cli.io import emit, emit_output
from dispatch.cli.results_file import ResultsFile, ResultsFollower
from dispatch.config import Settings
from dispatch.models import (DispatchOutput, ExecutionPhase, PhaseResult, PhaseState, PhaseTiming, TaskResult,
                             TaskSpec, TimingSummary)
from dispatch.store.deployment import Deployment
from dispatch.store.scheduler import DagScheduler, NoSuchRun, SendKeys
from dispatch.store.state import RedisStateStore


def output_of(results: list[TaskResult], **extra) -> DispatchOutput:
    phase = PhaseResult(phase=ExecutionPhase.PARALLEL_EXECUTION, phase_name="Parallel Execution", success=True,
                        duration_ms=12.5,
                        output_data={"nested": {"a": [1, 2, {"b": None}], "empty": {}, "none": []}})
    return DispatchOutput(success=True, run_id="r1", status="succeeded",
                          timing_summary=TimingSummary(total_duration_ms=3.0, phases=[
                              PhaseTiming(phase=ExecutionPhase.PARALLEL_EXECUTION, duration_ms=1.0, success=True,
                                          skipped=False)]),
                          phases_executed=[phase], results=results, **extra)


def captured(write, value) -> str:
    import sys

    real, sys.stdout = sys.stdout, io.StringIO()
    try:
        write(value)
        return sys.stdout.getvalue()
    finally:
        sys.stdout = real


@pytest.mark.parametrize("results", [
    [],
    [TaskResult(task_id="t0", agent="echo", success=True)],
    [TaskResult(task_id=f"t{i}", agent="echo", success=i % 2 == 0, error=None if i % 2 == 0 else "boom\nline 2",
                output={"text": "naïve ✓ \"quoted\"\n\ttab", "list": [], "map": {}, "deep": [[{"x": i}]]},
                duration_ms=1.5 * i, skipped=i == 3) for i in range(5)],
])
def test_the_streamed_document_is_byte_for_byte_the_old_one(results):
    output = output_of(results, error="a\nb", context_summary={"files": 2})
    old = captured(emit, output.model_dump(mode="json"))
    new = captured(emit_output, output)
    assert new == old
    assert json.loads(new)["results"] == [r.model_dump(mode="json") for r in results]


def scheduler_with(tasks: list[str]) -> tuple[DagScheduler, PhaseState]:
    state = PhaseState(run_id="run", tasks_data=[TaskSpec(task_id=t, agent="echo", description=t) for t in tasks])
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    sched.start(state, {t: {} for t in tasks}, started=0.0)
    return sched, state


class Inner:
    poll_s = 0.1

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append(name)


def test_the_results_file_gets_each_finished_task_once_from_a_cursor(tmp_path):
    sched, state = scheduler_with(["a", "b", "c", "d"])
    path = tmp_path / "results.jsonl"
    inner = Inner()
    follower = ResultsFollower(inner, ResultsFile(str(path)), lambda run_id: sched)
    follower.phase_started(ExecutionPhase.PARALLEL_EXECUTION, state)
    follower.progress()
    assert path.read_text() == ""
    for tid in ("b", "a"):
        sched.finish(TaskResult(task_id=tid, agent="echo", success=True, output={"id": tid}))
    sched.finish(TaskResult(task_id="a", agent="echo", success=True))  # a duplicate completion: no new line
    follower.progress(2, 4)
    assert [json.loads(line)["task_id"] for line in path.read_text().splitlines()] == ["b", "a"]
    assert follower.cursor == 2
    sched.finish(TaskResult(task_id="c", agent="echo", success=False, error="x"))
    follower.progress_finish()
    assert [json.loads(line)["task_id"] for line in path.read_text().splitlines()] == ["b", "a", "c"]
    # the run ends: what never finished comes from the final state, what was written is not written again
    state.task_results = [TaskResult(task_id=t, agent="echo", success=t != "d", skipped=t == "d")
                          for t in ("a", "b", "c", "d")]
    follower.results.finish(state)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["task_id"] for line in lines] == ["b", "a", "c", "d"]
    assert lines[0]["output"] == {"id": "b"} and lines[3]["skipped"] is True
    assert inner.calls.count("progress") == 2 and "phase_started" in inner.calls  # the log still sees it all


def test_a_results_file_that_cannot_be_written_is_a_usage_error(tmp_path):
    from dispatch.errors import UsageError

    with pytest.raises(UsageError, match="--results-file"):
        ResultsFile(str(tmp_path / "no-such-dir" / "r.jsonl"))


def test_states_are_compacted_in_redis_and_old_plain_states_still_load():
    client = fakeredis.FakeRedis()
    store = RedisStateStore(client, "p")
    state = PhaseState(run_id="r1", tasks_data=[TaskSpec(task_id=f"t{i}", agent="echo", description="same text")
                                                for i in range(200)])
    store.save(state)
    raw = client.get(store.key("r1"))
    plain = state.model_dump_json(indent=2).encode()
    assert raw[:1] != b"{" and json.loads(zlib.decompress(raw))["run_id"] == "r1"
    assert len(raw) * 10 < len(plain)
    assert store.load("r1").tasks_data == state.tasks_data
    client.set(store.key("r2"), state.model_copy(update={"run_id": "r2"}).model_dump_json(indent=2))  # as before
    assert store.load("r2").run_id == "r2"
    client.set(store.key("r3"), b"\x78\x01garbage")
    from dispatch.errors import StateFileError

    with pytest.raises(StateFileError, match="run r3: corrupt stored state"):
        store.load("r3")


def test_a_closed_run_keeps_no_scheduler_keys_its_agent_ledger_expires_and_a_late_duplicate_writes_none():
    client = fakeredis.FakeRedis()
    deployment = Deployment(Settings(key_prefix="p"), client)
    sched = deployment.scheduler("run")
    state = PhaseState(run_id="run", tasks_data=[TaskSpec(task_id=t, agent="echo", description=t) for t in "ab"])
    ledger = deployment.ledger("run")
    ledger.record({"phase-id": "phase_4"})
    ledger.start_phase_4("phase-id", 2, {"a": 5.0, "b": 5.0})
    first = sched.start(state, {t: {} for t in "ab"}, started=0.0)
    ledger.record({f"cel-{t}": f"agent:{t}" for t in first})
    keys = SendKeys(ledger=ledger.key, limits=ledger.limits_key, progress=ledger.progress_key)
    for tid in first:
        sched.prepare(tid, deployment.keys.cancel("run"), f"cel-{tid}")
        sched.finish(TaskResult(task_id=tid, agent="echo", success=True), keys)
    assert client.exists(ledger.key) and client.exists(sched.key("finished"))
    assert sched.quiet() and sched.claim_close()  # what the collect step does before closing
    deployment.retire("run")
    left = sorted(k.decode() for k in client.keys("*"))
    assert left == ["p:dag:run:closed", "p:limits:run", "p:phases:run", "p:progress:run", "p:tasks:run"], left
    lingering = {k: client.ttl(k) for k in ("p:limits:run", "p:progress:run", "p:tasks:run")}
    assert all(0 < ttl <= 600 for ttl in lingering.values()), lingering  # the agent ledger: minutes, not days
    assert ledger.tasks()["phase-id"] == "phase_4"  # `dispatch wait` still finds the phase tasks
    client.delete("p:tasks:run", "p:limits:run", "p:progress:run")  # as when they have expired
    assert ledger.tasks() == {"phase-id": "phase_4"}
    left = sorted(k.decode() for k in client.keys("*"))
    with pytest.raises(NoSuchRun):  # a redelivered agent message after the close
        sched.prepare("a", deployment.keys.cancel("run"), "cel-a-again")
    assert sorted(k.decode() for k in client.keys("*")) == left


def test_a_cancelled_runs_keys_linger_briefly_instead_of_for_the_state_ttl():
    client = fakeredis.FakeRedis()
    deployment = Deployment(Settings(key_prefix="p"), client)
    sched = deployment.scheduler("run")
    state = PhaseState(run_id="run", tasks_data=[TaskSpec(task_id="a", agent="echo", description="a")])
    sched.start(state, {"a": {}}, started=0.0)
    deployment.ledger("run").record({"c1": "agent:a"})
    deployment.retire("run", linger_s=600)
    ttls = {k.decode(): client.ttl(k) for k in client.keys("*")}
    assert ttls and all(0 < ttl <= 600 for key, ttl in ttls.items() if not key.endswith(":closed")), ttls
