"""The phase DAG, fast parts: the steps a selection runs as, the merge of two phases that saved the same run
at once (on both stores, from threads at the same time), and how a redelivered parallel phase knows it ran."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import fakeredis
import pytest

from dispatch.config import ComponentConfig, DispatchConfig, PhaseOptions
from dispatch.models import (ExecutionPhase, GlobalContext, PhaseResult, PhaseState, QuorumResult, TaskPlan,
                             TaskResult, TaskSpec)
from dispatch.pipeline.phase_graph import merge_branch, stages
from dispatch.store.state import DirectoryStateStore, RedisStateStore
from dispatch.tasks.phases import load_state, newest_ref

FULL = [0, 1, 2, 3, 4]


@pytest.mark.parametrize("selected, expected", [
    (FULL, [[0, 1], [2], [3], [4]]),
    ([0, 1], [[0, 1]]),  # --stop-after-phase 1
    ([0, 1, 3, 4], [[0, 1], [3], [4]]),  # --skip-phases 2: 3 reads the plan phase 1 may reset
    ([0, 2, 3, 4], [[0, 2], [3], [4]]),  # no quorum: planning reads nothing phase 0 writes
    ([0, 4], [[0], [4]]),  # phase 4 always runs alone, last
    ([0, 1, 4], [[0, 1], [4]]),  # ... after a group too (it is given both phases' refs)
    ([1, 2, 3, 4], [[1], [2], [3], [4]]),
    ([2, 3, 4], [[2], [3], [4]]),  # the default run
    ([0], [[0]]),
])
def test_steps_come_from_what_the_phases_read_and_write(selected, expected):
    assert stages(selected, DispatchConfig()) == expected


def test_parallel_false_is_the_sequence():
    config = DispatchConfig(phases=PhaseOptions(parallel=False))
    assert stages(FULL, config) == [[0], [1], [2], [3], [4]]


def test_a_validator_reading_the_gathered_context_makes_phase_1_wait_for_0():
    config = DispatchConfig(validators={
        "rules": ComponentConfig(kind="rules"), "ctx": ComponentConfig(kind="rules", reads_context=True)})
    assert stages(FULL, config) == [[0], [1], [2], [3], [4]]
    config.validators["ctx"] = ComponentConfig(kind="rules", reads_context=False)
    assert stages(FULL, config) == [[0, 1], [2], [3], [4]]


def test_parallel_is_a_typed_option():
    with pytest.raises(Exception, match="parallel"):
        DispatchConfig.model_validate({"phases": {"parallel": "yes"}})


# ------------------------------------------------------------------ the merge
def base_state() -> PhaseState:
    return PhaseState(run_id="r1", selected_phases=[0, 1], status="running", version=3)


def ran(state: PhaseState, phase: int, ok: bool = True) -> PhaseState:
    """``state`` after phase ``phase`` ran on it (what the phase body and ``status.after_phase`` leave)."""
    mine = state.model_copy(deep=True)
    mine.record(PhaseResult(phase=ExecutionPhase.of(phase), phase_name=ExecutionPhase.of(phase).title, success=ok))
    if phase == 0:
        mine.global_context = GlobalContext(query="q") if ok else None
        mine.status = "running"
    else:
        mine.quorum_result = QuorumResult(decision="PASS" if ok else "FAIL", confidence=0.9)
        mine.status = "succeeded" if ok else "failed"
    return mine


def saved(state: PhaseState) -> PhaseState:
    state = state.model_copy()
    state.version += 1  # what a store's save does
    return state


@pytest.mark.parametrize("first", [0, 1])
def test_two_branches_keep_each_others_writes_whichever_saves_first(first):
    base = base_state()
    second = 1 - first
    stored = saved(merge_branch(base, ran(base, first), first, 3))
    assert stored.status == "running"  # its peer has not saved: not over yet, even when phase 1 was last
    merged = merge_branch(stored, ran(base, second), second, 3)
    assert merged.global_context is not None and merged.quorum_result.decision == "PASS"
    assert [r.phase.number for r in merged.phases_executed] == [0, 1]
    assert merged.ran_from == {0: 3, 1: 3} and merged.status == "succeeded"


@pytest.mark.parametrize("first", [0, 1])
def test_a_quorum_fail_beside_phase_0_fails_the_run_like_the_sequence(first):
    base = base_state()
    branches = {0: ran(base, 0), 1: ran(base, 1, ok=False)}
    stored = saved(merge_branch(base, branches[first], first, 3))
    merged = merge_branch(stored, branches[1 - first], 1 - first, 3)
    assert merged.status == "failed" and merged.global_context is not None
    assert [r.success for r in merged.phases_executed] == [True, False]


def test_a_failed_phase_0_beside_the_quorum_turns_context_off_and_the_run_goes_on():
    base = base_state()
    base.global_context = GlobalContext(query="old")  # from a loaded state: phase 0 failing now drops it
    stored = saved(merge_branch(base, ran(base, 1), 1, 3))
    merged = merge_branch(stored, ran(base, 0, ok=False), 0, 3)
    assert merged.global_context is None and merged.status == "succeeded"


def test_a_cancel_saved_meanwhile_wins():
    base = base_state()
    cancelled = saved(base)
    cancelled.status = "cancelled"
    merged = merge_branch(cancelled, ran(base, 1), 1, 3)
    assert merged.status == "cancelled" and merged.quorum_result is not None


# ------------------------------------------------------------ the stores' update
def stores(tmp_path):
    return [DirectoryStateStore(tmp_path / "state"), RedisStateStore(fakeredis.FakeRedis(), "t")]


@pytest.mark.parametrize("which", [0, 1], ids=["directory", "redis"])
def test_concurrent_updates_lose_nothing(tmp_path, which):
    """Eight threads each record one phase result at the same moment: all eight are in the stored state."""
    store = stores(tmp_path)[which]
    store.save(PhaseState(run_id="r1"))
    barrier = threading.Barrier(8)

    def record(n: int) -> None:
        def change(stored):
            state = stored.model_copy(deep=True)
            state.input_extras = {**state.input_extras, f"k{n}": n}
            return state
        barrier.wait()
        store.update("r1", change)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.load("r1")
    assert final.input_extras == {f"k{n}": n for n in range(8)} and final.version == 9


def test_redis_update_redoes_the_change_after_a_save_in_between():
    store = RedisStateStore(fakeredis.FakeRedis(), "t")
    store.save(PhaseState(run_id="r1"))
    calls = []

    def change(stored):
        calls.append(stored.version)
        if len(calls) == 1:  # someone else saves between our read and our write
            other = stored.model_copy()
            other.status = "cancelled"
            store.save(other)
        return stored.model_copy()

    final = store.update("r1", change)
    assert calls == [1, 2] and final.status == "cancelled" and store.load("r1").version == 3


def test_a_lean_merge_after_a_peers_save_keeps_a_big_runs_tasks_and_results(monkeypatch):
    """The phase tasks merge with ``update(lean=True)``: the stored state's tasks, plan and results stay behind
    their stand-ins, and what the merge keeps of them is saved from those, whole."""
    from dispatch.store import state as state_module

    monkeypatch.setattr(state_module, "INLINE_TASKS", 5)
    monkeypatch.setattr(state_module, "INLINE_RESULTS", 5)
    store = RedisStateStore(fakeredis.FakeRedis(), "t")
    tasks = [TaskSpec(task_id=f"t{i}", agent="echo", description=f"task {i}") for i in range(12)]
    results = [TaskResult(task_id=f"t{i}", agent="echo", success=True, output={"n": i}) for i in range(8)]
    base = PhaseState(run_id="r1", selected_phases=[0, 1], status="running", tasks_data=tasks,
                      task_results=results, plan=TaskPlan(order=[t.task_id for t in tasks]))
    store.save(base)  # version 1: what both branches read
    branch = {n: ran(store.load("r1"), n) for n in (0, 1)}
    store.update("r1", lambda stored: merge_branch(stored, branch[0], 0, 1), lean=True)
    seen = []

    def merge(stored):
        seen.append(type(stored.tasks_data).__name__)
        return merge_branch(stored, branch[1], 1, 1)

    store.update("r1", merge, lean=True)  # its peer saved first: merged onto what it stored
    final = store.load("r1")
    assert seen == ["StoredTasks"]  # the tasks were not built for the merge
    assert [t.task_id for t in final.tasks_data] == [t.task_id for t in tasks]
    assert final.plan.order == base.plan.order and final.task_results == results
    assert final.global_context is not None and final.quorum_result.decision == "PASS"
    assert final.ran_from == {0: 1, 1: 1} and final.status == "succeeded" and final.version == 3


# ------------------------------------------------------------ redelivery
def test_a_redelivered_branch_passes_through_while_its_peer_runs(tmp_path):
    """Both phases got version 3; phase 0 saved (version 4).  Phase 1 still runs; phase 0 again does not."""
    store = DirectoryStateStore(tmp_path / "state")
    base = base_state()
    store.save(base.model_copy(update={"version": 2}))  # stored as version 3
    store.update("r1", lambda stored: merge_branch(stored, ran(stored, 0), 0, 3))
    deployment = SimpleNamespace(store=store)
    ref = {"run_id": "r1", "version": 3}
    assert load_state(deployment, ref, ExecutionPhase.QUORUM_VALIDATION)[1] is True
    assert load_state(deployment, ref, ExecutionPhase.CONTEXT_GATHERING)[1] is False
    assert load_state(deployment, ref, None)[1] is False  # phase 4's rule: the version alone


def test_a_step_after_a_group_reads_the_newest_ref():
    assert newest_ref([{"run_id": "r", "version": 4}, {"run_id": "r", "version": 5}]).version == 5
    assert newest_ref({"run_id": "r", "version": 4}).version == 4


# ------------------------------------------------ the real phase tasks, called as a worker would
def phase_task_env(tmp_path):
    """A ``task`` as ``run_phase_task`` sees it: its app carries a real ``Deployment`` (state folder,
    in-process Redis for the cancel flag and caches)."""
    from dispatch.config import Settings
    from dispatch.store import Deployment

    deployment = Deployment(Settings(state_dir=str(tmp_path / "state")), fakeredis.FakeRedis())
    task = SimpleNamespace(app=SimpleNamespace(_dispatch_deployment=deployment),
                           request=SimpleNamespace(id=None, called_directly=True))
    return deployment, task


def test_the_pair_merges_and_a_redelivered_phase_does_not_run_twice(tmp_path):
    from dispatch.models import TaskSpec
    from dispatch.tasks.phases import run_phase_task

    deployment, task = phase_task_env(tmp_path)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "pool.py").write_text("class ConnectionPool:\n    '''a postgres connection pool'''\n")
    state = PhaseState(run_id="r2", selected_phases=[0, 1], status="running", workspace_path=str(tmp_path / "ws"),
                       user_prompt="a postgres connection pool", rag_queries=["connection pool"],
                       tasks_data=[TaskSpec(task_id="pool", agent="echo", description="a postgres connection pool")])
    deployment.store.save(state)
    ref = state.ref().model_dump()  # what both phases of the pair are sent
    after_0 = run_phase_task(task, ExecutionPhase.CONTEXT_GATHERING, ref)
    after_1 = run_phase_task(task, ExecutionPhase.QUORUM_VALIDATION, ref)  # its peer saved first: it still runs
    stored = deployment.store.load("r2")
    assert (after_0["version"], after_1["version"]) == (2, 3) and stored.version == 3
    assert stored.global_context is not None and stored.quorum_result is not None
    assert stored.ran_from == {0: 1, 1: 1} and stored.status == "succeeded"
    first = [r.model_dump() for r in stored.phases_executed]
    for phase in (ExecutionPhase.CONTEXT_GATHERING, ExecutionPhase.QUORUM_VALIDATION):  # redelivered
        assert run_phase_task(task, phase, ref) == {"run_id": "r2", "version": 3}
    again = deployment.store.load("r2")
    assert again.version == 3 and [r.model_dump() for r in again.phases_executed] == first


@pytest.mark.parametrize("number", [0, 1, 2, 3])
def test_each_phase_writes_only_what_it_declares(tmp_path, number):
    """The merge keeps a phase's declared writes only: a phase body that wrote another field would lose it
    beside a peer.  Run the real bodies (offline: rules validator, the workspace index) and compare."""
    from dispatch.models import TaskSpec
    from dispatch.pipeline.phase_graph import phase_io
    from dispatch.pipeline.phases import PhaseEnv, execute_phase

    (tmp_path / "pool.py").write_text("class ConnectionPool:\n    '''a postgres connection pool'''\n")
    state = PhaseState(run_id="r3", selected_phases=FULL, status="running", workspace_path=str(tmp_path),
                       user_prompt="a postgres connection pool", rag_queries=["connection pool"],
                       tasks_data=[TaskSpec(task_id="pool", agent="echo", description="a postgres connection pool",
                                            context_requirements=["rag:connection pool"])])
    for earlier in range(number):  # the inputs the sequence would have given it
        execute_phase(ExecutionPhase.of(earlier), state, PhaseEnv(config=state.config, cache_dir=tmp_path / "i"),
                      lambda: False)
    before = state.model_dump()
    assert execute_phase(ExecutionPhase.of(number), state, PhaseEnv(config=state.config, cache_dir=tmp_path / "i"),
                         lambda: False)
    after = state.model_dump()
    changed = {name for name in after if after[name] != before[name]}
    bookkeeping = {"phases_executed", "current_phase", "status"}
    assert changed - bookkeeping <= phase_io(number, state.config).writes, changed
    assert changed - bookkeeping, "the phase changed nothing: the test shows nothing"
