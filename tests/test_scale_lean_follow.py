"""Issue 17, the CLI's memory at 100k tasks: a followed state comes without its task list, and a large
breakdown is read without one ``TaskSpec`` per task (``CompactTasks``), on fakeredis.

What must not change: the state every full reader (a worker, ``show``, ``resume``) loads, a state file
written from a lean state, the output printed from one, and every input fault's message.
"""
import io
import json
import tracemalloc
import zlib

import fakeredis
import pytest

from dispatch.cli.io import emit_output
from dispatch.errors import InputError
from dispatch.models import PhaseState, TaskContext, TaskPlan, TaskResult, TaskSpec
from dispatch.pipeline.inputs import load_json, parse_input, validate_input
from dispatch.pipeline.output import build_output
from dispatch.pipeline.tasklist import CompactTasks
from dispatch.runtime.client import Runner
from dispatch.store.parts import StoredTasks, StoredValue
from dispatch.store.state import INLINE_TASKS, RedisStateStore, pack_state, read_state_file, save_state_file

N = INLINE_TASKS + 700


def tasks_of(n: int) -> list[TaskSpec]:
    return [TaskSpec(task_id=f"t{i}", agent="echo", description=f"task {i}", input_data={"n": i},
                     dependencies=[f"t{i - 1}"] if i % 4 else []) for i in range(n)]


def large_state(n: int = N, run_id: str = "big") -> PhaseState:
    tasks = tasks_of(n)
    ids = [t.task_id for t in tasks]
    state = PhaseState(run_id=run_id, tasks_data=tasks, selected_phases=[2, 3, 4], status="succeeded",
                       plan=TaskPlan(order=ids, levels=[ids], agents=dict.fromkeys(ids, "echo"),
                                     dependents={i: [] for i in ids}),
                       task_contexts={i: TaskContext(task_id=i, budget_tokens=10) for i in ids})
    state.task_results = [TaskResult(task_id=i, agent="echo", success=True, output={"echo": i}) for i in ids]
    return state


@pytest.fixture
def store():
    return RedisStateStore(fakeredis.FakeRedis(), prefix="p", ttl_s=100)


def test_a_followed_state_does_not_carry_the_task_list(store):
    state = large_state()
    store.save(state)
    head = json.loads(zlib.decompress(store.client.get("p:run:big")))
    assert not {"tasks_data", "plan", "task_contexts", "task_results"} & set(head)
    lean = store.load_lean("big")
    assert isinstance(lean.tasks_data, StoredTasks) and len(lean.tasks_data) == N
    assert isinstance(lean.plan, StoredValue) and isinstance(lean.task_contexts, StoredValue)
    # measured: loading the lean state allocates a small fraction of what the whole state does
    tracemalloc.start()
    try:
        store.load_lean("big")
        lean_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        store.load("big")
        full_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lean_peak * 20 < full_peak, (lean_peak, full_peak)  # measured: 25 KB against 28 MB


def test_the_runner_follows_on_lean_states(store):
    class StoreRunner(Runner):
        @property
        def store(self):
            return store

    state = large_state()
    store.save(state)
    runner = StoreRunner.__new__(StoreRunner)
    runner.lean_results = True
    followed = runner.state_after(state.ref().model_dump(), state)
    assert isinstance(followed.tasks_data, StoredTasks) and not isinstance(followed.task_results, list)
    runner.lean_results = False
    assert isinstance(runner.state_after(state.ref().model_dump(), state).tasks_data, list)
    # a submitted large state, once lightened, holds the store's stand-ins instead of its tasks
    submitted = large_state()
    submitted.tasks_data = CompactTasks.of(submitted.tasks_data)
    runner.lean_results = True
    runner.lighten(submitted)
    assert isinstance(submitted.tasks_data, StoredTasks) and isinstance(submitted.plan, StoredValue)


def test_every_full_reader_sees_the_same_state(store, tmp_path):
    state = large_state()
    store.save(state)
    assert store.load("big").model_dump() == state.model_dump()
    save_state_file(store.load_lean("big"), tmp_path / "lean.json")
    save_state_file(store.load("big"), tmp_path / "full.json")
    lean, full = read_state_file(tmp_path / "lean.json"), read_state_file(tmp_path / "full.json")
    assert lean.model_dump(exclude={"saved_at"}) == full.model_dump(exclude={"saved_at"})
    # saved again from a lean state: nothing lost
    again = store.load_lean("big")
    again.status = "failed"
    store.save(again)
    assert store.load("big").model_dump(exclude={"status", "saved_at", "version"}) == \
        state.model_dump(exclude={"status", "saved_at", "version"})
    # a state that shrinks below the threshold drops its parts
    store.save(large_state(10))
    assert not store.client.exists("p:run:big:parts") and len(store.load_lean("big").tasks_data) == 10


def test_the_output_from_a_lean_state_is_byte_for_byte_the_same(store):
    store.save(large_state())
    streamed, whole = io.StringIO(), io.StringIO()
    emit_output(build_output(store.load_lean("big"), 3.0), streamed)
    emit_output(build_output(store.load("big"), 3.0), whole)
    assert streamed.getvalue() == whole.getvalue()


def test_compact_tasks_pack_like_a_list():
    state = large_state(1500)
    compact = state.model_copy(update={"tasks_data": CompactTasks.of(state.tasks_data)})
    assert json.loads(zlib.decompress(pack_state(compact))) == json.loads(zlib.decompress(pack_state(state)))
    assert compact.tasks_data[1499] == state.tasks_data[1499] and compact.tasks_data == state.tasks_data


def breakdown(n: int, **change) -> dict:
    doc = {"user_prompt": "p", "extra_key": {"kept": True}, "config": {"max_workers": 4},
           "tasks": [t.model_dump(exclude_defaults=True) for t in tasks_of(n)]}
    doc.update(change)
    return doc


def test_a_large_breakdown_is_read_as_compact_tasks_with_the_same_content():
    text = json.dumps(breakdown(N), indent=1)
    request = parse_input(text, "in.json")
    assert isinstance(request.tasks, CompactTasks) and len(request.tasks) == N
    reference = validate_input(load_json(text, "in.json"), "in.json")
    assert list(request.tasks) == reference.tasks
    assert request.model_dump(exclude={"tasks"}) == reference.model_dump(exclude={"tasks"})


@pytest.mark.parametrize("fault", ["unknown_dep", "bad_field", "malformed", "duplicate", "deep", "number"])
def test_a_large_breakdown_s_faults_read_as_before(fault):
    doc = breakdown(N)
    tasks = doc["tasks"]
    if fault == "unknown_dep":
        tasks[3000]["dependencies"] = ["nope"]
    elif fault == "bad_field":
        tasks[4000]["agent"] = 7
    elif fault == "duplicate":
        tasks[5000]["task_id"] = "t1"
    elif fault == "deep":
        tasks[10]["input_data"] = json.loads("[" * 120 + "]" * 120)
    elif fault == "number":
        tasks[10]["input_data"] = {"x": float("inf")}
    text = json.dumps(doc)
    if fault == "malformed":
        text = text.replace('"t4500"', '"t4500" x', 1)
    with pytest.raises(InputError) as expected:
        validate_input(load_json(text, "in.json"), "in.json")
    with pytest.raises(InputError) as got:
        parse_input(text, "in.json")
    assert str(got.value) == str(expected.value)


def test_a_large_breakdown_is_read_in_a_fraction_of_the_memory_of_its_whole_tree():
    text = json.dumps(breakdown(N))

    def peak(read):
        tracemalloc.start()
        try:
            kept = read()
            return tracemalloc.get_traced_memory()[1], kept
        finally:
            tracemalloc.stop()

    split_peak, split = peak(lambda: parse_input(text, "in.json"))
    whole_peak, whole = peak(lambda: validate_input(load_json(text, "in.json"), "in.json"))
    assert isinstance(split.tasks, CompactTasks) and isinstance(whole.tasks, list)
    assert split_peak * 2 < whole_peak, (split_peak, whole_peak)  # measured: 3.7 MB against 13.4 MB
