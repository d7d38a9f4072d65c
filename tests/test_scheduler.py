"""The dependency-driven scheduler against fakeredis: simulated workers, no Celery."""
import random
import threading

import fakeredis
import pytest

from dispatch.models import PhaseState, RunConfig, TaskResult, TaskSpec
from dispatch.phases import collect_results
from dispatch.planning import topological_levels
from dispatch.scheduler import DagScheduler


def make_state(edges: dict[str, list[str]], max_workers=5) -> PhaseState:
    tasks = [TaskSpec(task_id=t, agent="echo", description=t, dependencies=d) for t, d in edges.items()]
    return PhaseState(run_id="run", tasks_data=tasks, run_config=RunConfig(max_workers=max_workers))


def simulate(edges, max_workers=5, fail=(), seed=0):
    """Run the DAG with a random completion order; return (completion order, scheduler, peak in flight)."""
    rng = random.Random(seed)
    state = make_state(edges, max_workers)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    running = list(sched.start(state, {t: {} for t in edges}, started=0.0))
    done, peak = [], len(running)
    while running:
        tid = running.pop(rng.randrange(len(running)))
        for dep in edges[tid]:
            assert dep in done, f"{tid} ran before its dependency {dep}"
        done.append(tid)
        running += sched.complete(TaskResult(task_id=tid, agent="echo", success=tid not in fail))
        peak = max(peak, len(running))
    return done, sched, state, peak


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


@pytest.mark.parametrize("seed", range(20))
def test_every_task_runs_once_after_its_dependencies(seed):
    rng = random.Random(seed)
    names = [f"t{i}" for i in range(40)]
    edges = {n: rng.sample(names[:i], k=min(i, rng.randint(0, 3))) for i, n in enumerate(names)}
    done, *_ = simulate(edges, max_workers=rng.randint(1, 8), seed=seed)
    assert sorted(done) == sorted(names)


def test_max_workers_caps_tasks_in_flight():
    edges = {f"t{i}": [] for i in range(30)}
    for limit in (1, 3, 7):
        _, _, _, peak = simulate(edges, max_workers=limit)
        assert peak == limit


def test_a_failure_skips_its_transitive_dependents_only():
    edges = {"a": [], "b": ["a"], "c": ["b"], "x": [], "y": ["x"]}
    done, sched, state, _ = simulate(edges, fail={"b"})
    assert sorted(done) == ["a", "b", "x", "y"]
    results = collect_results(state, sched.results())
    assert [r.task_id for r in results] == list(edges)  # input order, nothing vanishes
    c = results[2]
    assert c.skipped and not c.success and "dependency 'b' failed" in c.error


def test_skip_reason_names_a_skipped_dependency():
    edges = {"a": [], "b": ["a"], "c": ["b"]}
    _, sched, state, _ = simulate(edges, fail={"a"})
    results = {r.task_id: r for r in collect_results(state, sched.results())}
    assert "dependency 'a' failed" in results["b"].error
    assert "dependency 'b' was skipped" in results["c"].error


def test_redelivered_completion_schedules_nothing_twice():
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    assert sched.start(state, {}, started=0.0) == ["a"]
    assert sorted(sched.complete(TaskResult(task_id="a", agent="echo", success=True))) == ["b", "c"]
    assert sched.complete(TaskResult(task_id="a", agent="echo", success=True)) == []
    assert sched.complete(TaskResult(task_id="b", agent="echo", success=True)) == []
    assert sched.complete(TaskResult(task_id="c", agent="echo", success=True)) == ["d"]


def test_dependents_receive_dependency_outputs():
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    sched.start(state, {}, started=0.0)
    sched.complete(TaskResult(task_id="a", agent="echo", success=True, output={"n": 1}))
    assert sched.dependency_outputs(["a", "b"]) == {"a": {"n": 1}}


def test_concurrent_completions_from_threads_never_exceed_the_limit_or_lose_a_task():
    names = [f"t{i}" for i in range(200)]
    rng = random.Random(7)
    edges = {n: rng.sample(names[:i], k=min(i, rng.randint(0, 2))) for i, n in enumerate(names)}
    server = fakeredis.FakeServer()
    state = make_state(edges, max_workers=6)
    sched = DagScheduler(fakeredis.FakeRedis(server=server), "t", "run")
    queue, lock, done, in_flight, peak = list(sched.start(state, {}, started=0.0)), threading.Lock(), [], [0], [0]
    cond = threading.Condition(lock)

    def worker():
        own = DagScheduler(fakeredis.FakeRedis(server=server), "t", "run")
        while True:
            with cond:
                while not queue and len(done) < len(names):
                    cond.wait(0.05)
                if len(done) >= len(names) and not queue:
                    return
                tid = queue.pop()
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            with cond:  # the agent's work is over once it reports completion
                in_flight[0] -= 1
            nxt = own.complete(TaskResult(task_id=tid, agent="echo", success=True))
            with cond:
                done.append(tid)
                queue.extend(nxt)
                cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == sorted(names)
    assert peak[0] <= 6


def test_levels_helper_matches_scheduler_roots():
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    assert sched.start(state, {}, started=0.0) == topological_levels(state.tasks_data)[0]


def test_results_kept_from_an_earlier_attempt_are_not_run_again():
    edges = {"a": [], "b": ["a"], "c": ["b"], "x": []}
    state = make_state(edges)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    kept = {"a": TaskResult(task_id="a", agent="echo", success=True, output={"n": 1})}
    first = sched.start(state, {}, started=0.0, finished=kept)
    assert sorted(first) == ["b", "x"]  # a is done; b's only dependency is satisfied
    assert sched.dependency_outputs(["a"]) == {"a": {"n": 1}}
    assert sched.complete(TaskResult(task_id="b", agent="echo", success=True)) == ["c"]
    assert set(sched.results()) == {"a", "b"}


def test_unblocked_tasks_wait_in_the_outbox_until_sent():
    """A completer that dies before sending what it unblocked leaves them for its redelivery."""
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    sched.start(state, {}, started=0.0)
    taken = sched.complete(TaskResult(task_id="a", agent="echo", success=True))
    assert sorted(taken) == ["b", "c"]
    assert sorted(sched.unsent("a")) == ["b", "c"]   # the worker died here: the redelivery finds them
    sched.sent("a")
    assert sched.unsent("a") == []
    assert sched.complete(TaskResult(task_id="b", agent="echo", success=True)) == []
    assert sched.unsent("b") == []  # nothing unblocked, nothing recorded
