"""The dependency-driven scheduler against fakeredis: simulated workers, no Celery."""
import json
import random
import threading

import fakeredis
import pytest

from dispatch.models import PhaseState, RunConfig, TaskResult, TaskSpec
from dispatch.pipeline.execution import collect_results
from dispatch.planning.graph import topological_levels
from dispatch.store.scheduler import AlreadyClaimed, DagScheduler, SendKeys


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
        running += sched.finish(TaskResult(task_id=tid, agent="echo", success=tid not in fail)).task_ids
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
    assert sorted(sched.finish(TaskResult(task_id="a", agent="echo", success=True)).task_ids) == ["b", "c"]
    assert sched.finish(TaskResult(task_id="a", agent="echo", success=True)).task_ids == []
    assert sched.finish(TaskResult(task_id="b", agent="echo", success=True)).task_ids == []
    assert sched.finish(TaskResult(task_id="c", agent="echo", success=True)).task_ids == ["d"]


def test_dependents_receive_dependency_outputs():
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    sched.start(state, {t: {} for t in DIAMOND}, started=0.0)
    sched.finish(TaskResult(task_id="a", agent="echo", success=True, output={"n": 1})).task_ids
    assert sched.prepare("b").dependency_outputs == {"a": {"n": 1}}
    assert sched.prepare("d").dependency_outputs == {}  # neither b nor c has finished


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
            nxt = own.finish(TaskResult(task_id=tid, agent="echo", success=True)).task_ids
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
    first = sched.start(state, {t: {} for t in edges}, started=0.0, finished=kept)
    assert sorted(first) == ["b", "x"]  # a is done; b's only dependency is satisfied
    assert sched.prepare("b").dependency_outputs == {"a": {"n": 1}}
    assert sched.finish(TaskResult(task_id="b", agent="echo", success=True)).task_ids == ["c"]
    assert set(sched.results()) == {"a", "b"}


def test_unblocked_tasks_wait_in_the_outbox_until_sent():
    """A completer that dies before sending what it unblocked leaves them for its redelivery."""
    state = make_state(DIAMOND)
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    sched.start(state, {}, started=0.0)
    taken = sched.finish(TaskResult(task_id="a", agent="echo", success=True)).task_ids
    assert sorted(taken) == ["b", "c"]
    assert sorted(sched.unsent("a")) == ["b", "c"]   # the worker died here: the redelivery finds them
    sched.sent("a")
    assert sched.unsent("a") == []
    assert sched.finish(TaskResult(task_id="b", agent="echo", success=True)).task_ids == []
    assert sched.unsent("b") == []  # nothing unblocked, nothing recorded


def test_a_completion_names_records_and_counts_what_it_sends_in_one_script():
    """With send keys, the script gives each task a Celery id, records it for cancel and reads its time
    limit, so the completer only publishes."""
    client = fakeredis.FakeRedis()
    state = make_state(DIAMOND)
    sched = DagScheduler(client, "t", "run")
    sched.start(state, {}, started=0.0)
    client.hset("ledger-limits", mapping={"b": "30.0"})
    keys = SendKeys(ledger="ledger", limits="ledger-limits", progress="progress")
    done = sched.finish(TaskResult(task_id="a", agent="echo", success=True), keys)
    assert done.finished == 1 and sorted(done.task_ids) == ["b", "c"]
    ids = {tid: cid for tid, cid, _ in done.sends}
    assert len(set(ids.values())) == 2 and all(cid.startswith("run-") for cid in ids.values())  # run id first
    assert {k.decode(): v.decode() for k, v in client.hgetall("ledger").items()} == \
        {ids["b"]: "agent:b", ids["c"]: "agent:c"}
    assert {tid: limit for tid, _, limit in done.sends} == {"b": 30.0, "c": None}
    assert client.ttl("ledger") > 0
    assert sched.finish(TaskResult(task_id="a", agent="echo", success=True), keys).sends == []  # redelivered
    assert client.hlen("ledger") == 2


def independent_tasks_with_a_progress_target(n: int) -> tuple[fakeredis.FakeRedis, DagScheduler, list[str]]:
    client = fakeredis.FakeRedis()
    edges = {f"t{i}": [] for i in range(n)}
    sched = DagScheduler(client, "t", "run")
    sched.start(make_state(edges, max_workers=n), {}, started=0.0)
    client.set("progress", json.dumps({"task_id": "p4", "total": n}))
    return client, sched, list(edges)


def test_a_completion_returns_the_progress_target_every_n_completions():
    client, sched, tasks = independent_tasks_with_a_progress_target(6)
    keys = SendKeys(ledger="l", limits="lim", progress="progress", progress_every=3)
    reported = []
    for t in tasks:
        reported.append(sched.finish(TaskResult(task_id=t, agent="echo", success=True), keys).progress_target)
        client.delete(sched.key("reported"))  # as if the minimum gap between reports had passed
    assert [t is not None for t in reported] == [False, False, True, False, False, True]


def test_progress_reports_are_at_least_the_gap_apart():
    _, sched, tasks = independent_tasks_with_a_progress_target(5)
    keys = SendKeys(ledger="l", limits="lim", progress="progress", progress_gap_ms=60_000)
    reported = [sched.finish(TaskResult(task_id=t, agent="echo", success=True), keys).progress_target
                for t in tasks]
    assert [t is not None for t in reported] == [True, False, False, False, False]


def test_prepare_returns_payload_cancel_flag_and_dependency_outputs_in_one_call():
    client = fakeredis.FakeRedis()
    state = make_state(DIAMOND)
    sched = DagScheduler(client, "t", "run")
    sched.start(state, {t: {"p": t} for t in DIAMOND}, started=0.0)
    sched.finish(TaskResult(task_id="a", agent="echo", success=True, output={"n": 1})).task_ids
    sched.finish(TaskResult(task_id="b", agent="echo", success=True, output="from b")).task_ids
    client.set("cancel", 1)
    payload, cancelled, deps, _ = sched.prepare("d", "cancel")
    assert json.loads(payload) == {"p": "d"} and cancelled and deps == {"b": "from b"}  # c has not finished
    assert sched.prepare("b")[:3] == (json.dumps({"p": "b"}), False, {"a": {"n": 1}})
    with pytest.raises(LookupError):
        sched.prepare("nope")


def test_a_task_sent_twice_is_claimed_by_one_celery_task_only():
    """A redelivered completer may re-send a task it had already sent: the agent must run once."""
    client = fakeredis.FakeRedis()
    sched = DagScheduler(client, "t", "run", ttl_s=600)
    sched.start(make_state(DIAMOND), {t: {} for t in DIAMOND}, started=0.0)
    assert sched.prepare("a", celery_id="first").payload == "{}"
    assert sched.prepare("a", celery_id="first").payload == "{}"  # its retry or its own redelivery
    with pytest.raises(AlreadyClaimed):
        sched.prepare("a", celery_id="second")
    assert sched.prepare("a").payload == "{}"  # no claim asked: no check
    assert 0 < client.ttl(sched.key("claims")) <= 600


def test_phase_4_records_what_it_sent_and_closes_only_when_quiet_and_once():
    """What a redelivered phase 4 re-sends, and the closing rule two chords over one scheduler obey."""
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run", ttl_s=600)
    first = sched.start(make_state(DIAMOND, max_workers=1), {t: {} for t in DIAMOND}, started=0.0)
    assert first == ["a"] and sched.started_tasks() == ["a"] and sched.exists()
    assert not sched.quiet()  # "a" is in flight
    taken = sched.finish(TaskResult(task_id="a", agent="echo", success=True)).task_ids
    assert len(taken) == 1 and not sched.quiet()  # one slot: the other of b, c still waits
    while taken:
        tid = taken.pop(0)
        assert not sched.quiet()
        taken += sched.finish(TaskResult(task_id=tid, agent="echo", success=True)).task_ids
    assert sched.quiet()
    assert sched.claim_close() and not sched.claim_close()
    sched.reset(keep_closed=True)
    assert not sched.exists() and not sched.claim_close()  # a late chord cannot close it again
    sched.start(make_state(DIAMOND), {t: {} for t in DIAMOND}, started=0.0)  # a resume starts afresh
    assert sched.claim_close()


def test_an_agent_message_for_a_run_without_phase_4_writes_nothing():
    from dispatch.store import NoSuchRun

    client = fakeredis.FakeRedis()
    sched = DagScheduler(client, "t", "ghost")
    with pytest.raises(NoSuchRun):
        sched.prepare("t1", "cancel", celery_id="c1")
    assert client.keys("*") == []


def test_the_close_is_a_lease_its_closer_renews_and_a_dead_closer_lets_lapse(monkeypatch):
    """A collect step whose worker died while closing held the close for the run's TTL (until the watchdog
    released it two minutes later); now its claim lapses within ``CLOSE_LEASE_S``, while a live closer
    renews it for as long as its close takes."""
    import time

    from dispatch.store import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "CLOSE_LEASE_S", 3)
    client = fakeredis.FakeRedis()
    sched = DagScheduler(client, "t", "run", ttl_s=600)
    assert sched.claim_close() and 0 < client.ttl(sched.key("closed")) <= 3
    with sched.holding_close():
        time.sleep(4.5)  # past one lease: renewed meanwhile
        assert not sched.claim_close()
    time.sleep(3.5)  # nobody renews it now: a closer that died
    assert sched.claim_close()
