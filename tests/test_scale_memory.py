"""Issue 17, bounded memory: a large run's task results kept apart in Redis and streamed, on fakeredis.

What must not change: what a run prints, what a state file holds, what every
reader of a state sees (old inline states included); the end-to-end run on
real workers is ``test_scale_memory_cli.py``.
"""
import io
import json
import zlib

import fakeredis
import pytest

from dispatch.cli.io import emit_output
from dispatch.cli.log import task_line, task_lines
from dispatch.errors import StateFileError
from dispatch.models import ExecutionPhase, PhaseState, TaskPlan, TaskResult, TaskSpec, Usage
from dispatch.pipeline.execution import Finished, close_execution
from dispatch.pipeline.output import build_output
from dispatch.store import state as state_module
from dispatch.store.state import (RedisStateStore, StoredResults, pack_state, read_state_file, save_state_file,
                                  unpack_state)


def big_state(n: int, run_id: str = "big") -> PhaseState:
    tasks = [TaskSpec(task_id=f"t{i}", agent="echo", description=f"task {i}",
                      dependencies=[f"t{i - 1}"] if i % 5 else []) for i in range(n)]
    state = PhaseState(run_id=run_id, tasks_data=tasks, selected_phases=[4], status="succeeded",
                       plan=TaskPlan(order=[t.task_id for t in tasks]))
    state.task_results = [TaskResult(task_id=t.task_id, agent="echo", success=i % 97 != 3, skipped=i % 97 == 4,
                                     output={"echo": "x" * (i % 13)}, worker=f"w{i % 3}", duration_ms=1.0,
                                     error=None if i % 97 != 3 else "boom",
                                     usage=Usage(input_tokens=i % 7, calls=1, cost_usd=0.001))
                          for i, t in enumerate(tasks)]
    return state


@pytest.fixture
def store():
    return RedisStateStore(fakeredis.FakeRedis(), prefix="p", ttl_s=100)


def test_a_large_state_keeps_its_results_apart_and_loads_whole(store):
    state = big_state(2500)
    store.save(state)
    head = json.loads(zlib.decompress(store.client.get("p:run:big")))
    assert "task_results" not in head and len(head["tasks_data"]) == 2500
    meta = store.client.hmget("p:run:big:results", ["count", "chunks"])
    assert meta == [b"2500", b"3"] and 0 < store.client.ttl("p:run:big:results") <= 100
    loaded = store.load("big")
    assert isinstance(loaded.task_results, list) and loaded.model_dump() == state.model_dump()
    lean = store.load_lean("big")
    assert isinstance(lean.task_results, StoredResults) and len(lean.task_results) == 2500
    assert [r.model_dump() for r in lean.task_results] == [r.model_dump() for r in state.task_results]
    # saved again from a lean state (what `update` or a cancel might do): the same results
    lean.status = "failed"
    store.save(lean)
    assert store.load("big").task_results == state.task_results


def test_a_small_state_stays_one_key_and_a_shrunk_one_drops_its_chunks(store):
    store.save(big_state(2500))
    small = big_state(10)
    store.save(small)
    assert not store.client.exists("p:run:big:results")
    assert len(json.loads(zlib.decompress(store.client.get("p:run:big")))["task_results"]) == 10
    assert store.load_lean("big").task_results == small.task_results


def test_states_written_before_load_as_they_were(store):
    state = big_state(1500)
    store.client.set("p:run:big", pack_state(state))  # a packed state with its results inline
    assert store.load_lean("big").task_results == state.task_results
    store.client.set("p:run:big", state.model_dump_json(indent=2))  # a plain JSON state of older still
    assert store.load("big").task_results == state.task_results
    assert unpack_state(state.model_dump_json(), "x").startswith("{")


def test_a_missing_or_corrupt_chunk_is_a_clear_error(store):
    store.save(big_state(2500))
    store.client.hset("p:run:big:results", "1", b"not zlib")
    with pytest.raises(StateFileError, match="corrupt stored task results, chunk 1"):
        store.load("big")
    store.save(big_state(2500))
    store.client.hdel("p:run:big:results", "2")
    with pytest.raises(StateFileError, match="chunk 2 is missing"):
        list(store.load_lean("big").task_results)


def test_a_state_file_from_a_lean_state_is_the_same_state(store, tmp_path):
    state = big_state(2500)
    store.save(state)
    save_state_file(store.load_lean("big"), tmp_path / "lean.json")
    save_state_file(store.load("big"), tmp_path / "full.json")
    lean, full = read_state_file(tmp_path / "lean.json"), read_state_file(tmp_path / "full.json")
    assert lean.model_dump(exclude={"saved_at"}) == full.model_dump(exclude={"saved_at"})
    assert json.loads((tmp_path / "lean.json").read_text())["task_results"][5]["task_id"] == "t5"
    empty = PhaseState(run_id="e")
    empty.task_results = StoredResults(store.client, "none", 0, 0, "x")
    save_state_file(empty, tmp_path / "empty.json")
    assert read_state_file(tmp_path / "empty.json").task_results == []


def test_the_output_streamed_from_the_store_is_byte_for_byte_the_same(store):
    state = big_state(1200)
    store.save(state)
    streamed, whole = io.StringIO(), io.StringIO()
    emit_output(build_output(store.load_lean("big"), 12.5), streamed)
    emit_output(build_output(store.load("big"), 12.5), whole)
    assert streamed.getvalue() == whole.getvalue()
    assert json.loads(streamed.getvalue())["usage"]["total"]["calls"] == 1200


def old_task_lines(state: PhaseState, limit: int) -> list[str]:
    """``task_lines`` as it was before it streamed (sorted whole): the reference."""
    tasks = state.task_results
    if len(tasks) <= limit:
        return [task_line(t) for t in tasks]
    worst = sorted(tasks, key=lambda t: 0 if not t.success and not t.skipped else 1 if t.skipped else 2)
    rest = worst[limit:]
    ok = sum(1 for t in rest if t.success)
    counts = ", ".join(part for part in (f"{ok} succeeded" if ok else "",
                                         f"{len(rest) - ok} failed or skipped" if len(rest) > ok else "") if part)
    return [task_line(t) for t in worst[:limit]] + [f"… and {len(rest)} more tasks ({counts}): "
                                                     f"dispatch show {state.run_id}"]


@pytest.mark.parametrize("n, limit", [(5, 20), (300, 20), (300, 2), (300, 5), (40, 39)])
def test_the_summary_lines_are_those_of_before(store, n, limit):
    state = big_state(n)
    store.save(state)
    assert task_lines(store.load_lean("big"), limit) == old_task_lines(state, limit)


def closing_state(n: int) -> tuple[PhaseState, dict[str, TaskResult]]:
    state = big_state(n, "c")
    finished = {r.task_id: r for r in state.task_results if not r.skipped and r.task_id != "t7"}
    state.task_results = []
    return state, finished


@pytest.mark.parametrize("paused", [None, "max_tokens"])
def test_the_streamed_close_records_what_the_in_memory_close_does(store, paused):
    """The collect step's ``Finished`` (flags and spend, results fetched by id) against the dict path."""
    whole, finished = closing_state(1300)
    streamed = whole.model_copy(deep=True)
    if paused:  # two tasks refused at their start by a cap
        for tid in ("t20", "t21"):
            finished[tid] = finished[tid].model_copy(update={"success": False, "not_run": True, "error": "x"})
    fetched: list[int] = []

    def fetch(ids):
        fetched.append(len(ids))
        return [finished[tid] for tid in ids]

    landed = Finished.of(finished)
    total_usage = Usage()
    for r in finished.values():
        total_usage = total_usage + r.usage
    light = Finished(dict(landed.flags), [total_usage], set(landed.workers), fetch)
    a = close_execution(whole, finished, 1.0, paused=paused)
    b = close_execution(streamed, light, 1.0, paused=paused)
    assert not fetched and len(streamed.task_results) == 1300  # nothing read until the results are written
    store.save(streamed)
    assert max(fetched) <= 1000
    assert a.model_dump(exclude={"completed_at", "duration_ms"}) == b.model_dump(exclude={"completed_at",
                                                                                        "duration_ms"})
    assert store.load("c").task_results == whole.task_results
    assert whole.status == store.load("c").status


def test_the_threshold_is_a_constant_a_test_can_lower(store, monkeypatch):
    monkeypatch.setattr(state_module, "INLINE_RESULTS", 3)
    monkeypatch.setattr(state_module, "RESULTS_CHUNK", 2)
    state = big_state(5)
    store.save(state)
    assert store.client.hget("p:run:big:results", "chunks") == b"3"
    assert list(store.load_lean("big").task_results) == state.task_results
    assert store.load("big").result_for(ExecutionPhase.PARALLEL_EXECUTION) is None


def test_a_broken_chord_s_lost_tasks_are_failed_and_their_dependents_skipped():
    state, finished = closing_state(12)
    del finished["t6"]
    result = close_execution(state, finished, 1.0, broken="chord broke", lost={"t6": "its worker was lost"})
    by_id = {r.task_id: r for r in state.task_results}
    assert isinstance(state.task_results, list) and len(by_id) == 12
    assert by_id["t6"].error == "its worker was lost" and not by_id["t6"].skipped
    assert by_id["t8"].success  # it had finished: what the scheduler recorded stands
    assert by_id["t7"].error == "skipped: dependency 't6' failed" and not result.success
