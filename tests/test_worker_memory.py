"""Issue 17, a worker's memory after a run: nothing per task kept, phase 4 started in bounded pieces.

Structural, not timing: a real worker is asked (a control command of its own app) what its result
backends still hold after several runs; the scheduler's start is checked on fakeredis for how many
tasks it sends at once and how much of the payloads it holds while writing them.
"""
import json
import textwrap
from collections import Counter

import fakeredis

from conftest import ROOT, run_cli
from dispatch.config import DispatchConfig, Settings
from dispatch.models import PhaseConfig, PhaseState, RunConfig, TaskResult, TaskSpec
from dispatch.pipeline import execution
from dispatch.pipeline.inputs import validate_input
from dispatch.pipeline.prepare import prepare_state
from dispatch.runtime import memory
from dispatch.runtime.app import create_app
from dispatch.store import scheduler as scheduler_module
from dispatch.store.scheduler import TAKE_MAX, WRITE_CHUNK, DagScheduler

# the worker's app plus a control command that counts, in every Redis result backend of the process (one
# per pool thread), the results registered as waited for and the result channels subscribed to
PROBE_APP = textwrap.dedent('''
    import gc
    from celery.backends.redis import RedisBackend
    from celery.worker.control import control_command
    from dispatch.runtime.worker import app  # noqa: F401 - the app Celery loads

    @control_command()
    def kept_results(state):
        gc.collect()
        found = []
        for backend in [o for o in gc.get_objects() if isinstance(o, RedisBackend)]:
            concrete, weak = backend._pending_results
            consumer = backend.__dict__.get("result_consumer")
            pubsub = getattr(consumer, "_pubsub", None)
            found.append({"pending": len(concrete) + len(weak),
                          "subscribed": len(getattr(consumer, "subscribed_to", ()) or ()),
                          "channels": len(pubsub.channels) if pubsub is not None else 0})
        return found

    @control_command()
    def accepted_counts(state):
        from celery.worker.state import total_count
        return dict(total_count)
''')


def flat(n: int, max_workers: int, stem: str = "t") -> str:
    return json.dumps({"user_prompt": "kept results", "config": {"max_workers": max_workers},
                       "tasks": [{"task_id": f"{stem}{i}", "agent": "echo", "description": f"task {i}"}
                                 for i in range(n)]})


def test_a_worker_keeps_no_result_of_the_chords_it_started(distributed, tmp_path):
    """Phase 4's chord header (agent tasks, which store no result) was registered in the backend's pending
    map by Celery's group barrier and never let go: 16 results (and channel subscriptions) per run here."""
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    distributed["workers"].start("probe", app="probe_app", concurrency=2,
                                 env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    for _ in range(3):
        run = run_cli(["--skip-phases", "0,1"], stdin=flat(24, 16), env=distributed["env"])
        assert run.returncode == 0, run.stderr
        assert len(run.json["results"]) == 24
    app = create_app(Settings.from_env(distributed["env"]))
    replies = app.control.broadcast("kept_results", reply=True, timeout=10)
    [backends] = [reply for answer in replies for reply in answer.values()]
    assert backends, "the probe found no result backend in the worker"
    assert sum(b["pending"] for b in backends) == 0, backends
    assert sum(b["subscribed"] for b in backends) == 0, backends
    assert sum(b["channels"] for b in backends) == 0, backends


def test_celery_counts_agent_tasks_under_one_name_not_one_per_task_id(distributed, tmp_path):
    """Celery counts accepted tasks by the name their message shows: an agent task's is its shadow
    (``dispatch.agent:<task_id>``), so a long-lived worker kept one entry per task id it ever ran."""
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    distributed["workers"].start("probe", app="probe_app", concurrency=2,
                                 env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    for stem in ("a", "b"):  # every task id new, as in runs of different breakdowns
        run = run_cli(["--skip-phases", "0,1"], stdin=flat(200, 16, stem), env=distributed["env"])
        assert run.returncode == 0, run.stderr
    app = create_app(Settings.from_env(distributed["env"]))
    [counts] = [reply for answer in app.control.broadcast("accepted_counts", reply=True, timeout=10)
                for reply in answer.values()]
    shadows = [name for name in counts if name.startswith("dispatch.agent:")]
    assert len(shadows) <= memory.FOLD_AT  # folded as more arrive, not one per task id for good
    assert counts.get("dispatch.agent", 0) + sum(counts[name] for name in shadows) == 400  # none lost
    assert counts["dispatch.phase_4_parallel_execution"] == 2


def test_folding_keeps_every_count_and_the_other_names():
    counts = Counter({"dispatch.agent:t1": 1, "dispatch.agent:t2": 2, "dispatch.agent": 4, "dispatch.collect": 3})
    memory.fold_agent_counts(counts)
    assert counts == Counter({"dispatch.agent": 7, "dispatch.collect": 3})
    memory.fold_agent_counts(counts)  # nothing to fold: unchanged
    assert counts == Counter({"dispatch.agent": 7, "dispatch.collect": 3})


def roots(n: int, max_workers: int) -> PhaseState:
    tasks = [TaskSpec(task_id=f"t{i}", agent="echo", description="x") for i in range(n)]
    return PhaseState(run_id="run", tasks_data=tasks, run_config=RunConfig(max_workers=max_workers))


def test_phase_4_starts_with_a_bounded_header_and_completions_take_the_rest():
    n = TAKE_MAX * 2 + 7
    sched = DagScheduler(fakeredis.FakeRedis(), "t", "run")
    first = sched.start(roots(n, max_workers=n), {f"t{i}": {} for i in range(n)}, started=0.0)
    assert len(first) == TAKE_MAX  # not one signature per task of the run at once
    running, done, most = list(first), [], 0
    while running:
        tid = running.pop()
        done.append(tid)
        taken = sched.finish(TaskResult(task_id=tid, agent="echo", success=True)).task_ids
        most = max(most, len(taken))
        running += taken
    assert sorted(done) == sorted(f"t{i}" for i in range(n)) and len(done) == n
    assert most == TAKE_MAX  # the slots stay filled, a bounded number per completion
    assert sched.quiet()


def test_the_start_writes_payloads_a_chunk_at_a_time_from_an_iterator(monkeypatch):
    n = WRITE_CHUNK * 3 + 5
    client = fakeredis.FakeRedis()
    sched = DagScheduler(client, "t", "run")
    pulled, held = [0], []
    writes = []

    def payloads():
        for i in range(n):
            pulled[0] += 1
            yield f"t{i}", {"n": i}

    real = sched._write

    def write(key, chunk, zadd):
        if key == sched.key("payloads"):
            writes.append(len(chunk))
            held.append(pulled[0])
        real(key, chunk, zadd)

    monkeypatch.setattr(sched, "_write", write)
    sched.start(roots(n, max_workers=4), payloads(), started=0.0)
    assert max(writes) <= WRITE_CHUNK and sum(writes) == n
    assert held[0] <= WRITE_CHUNK  # the first chunk went before the rest was built
    assert client.hlen(sched.key("payloads")) == n
    assert json.loads(client.hget(sched.key("payloads"), "t7")) == {"n": 7}


def test_phase_4_builds_each_payload_as_the_scheduler_takes_it(monkeypatch):
    document = {"tasks": [{"task_id": f"t{i}", "agent": "echo", "description": f"task {i}",
                           "dependencies": [f"t{i - 1}"] if i % 3 else []} for i in range(30)]}
    state = prepare_state(validate_input(document), PhaseConfig(skip_phases=[0, 1]),
                          DispatchConfig.model_validate({"workspace": {"isolation": "shared"}}), None).state
    whole = execution.task_payloads(state)
    built = []

    class Counted(execution.AgentPayload):
        def __init__(self, **fields):
            super().__init__(**fields)
            built.append(fields["task"].task_id)

    monkeypatch.setattr(execution, "AgentPayload", Counted)
    stream = execution.iter_task_payloads(state)
    first = next(stream)
    assert built == ["t0"] and first[0] == "t0"  # one built, not the run's 30
    rest = dict([first, *stream])
    assert len(built) == 30
    assert {tid: p.model_dump() for tid, p in rest.items()} == {tid: p.model_dump() for tid, p in whole.items()}
    assert execution.task_limits(state, execution.task_agents(state)) == {t: p.timeout_s for t, p in whole.items()}


def test_the_take_caps_are_in_the_scripts():
    assert "#taken < most" in scheduler_module.script("complete")
    assert "#taken < most" in scheduler_module.script("take_ready")


def idle_worker(monkeypatch, rss_mb: int, after_release_mb: int, ready_mb: int) -> tuple[list, list, list]:
    """The releaser's view of a worker: its RSS, the releases it made, its clock (each a one-item list)."""
    rss, released, now = [rss_mb << 20], [], [1000.0]
    monkeypatch.setattr(memory, "rss_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "release", lambda: released.append(rss[0]))
    monkeypatch.setattr(memory, "_rss_after_release", after_release_mb << 20)
    monkeypatch.setattr(memory, "_rss_at_start", ready_mb << 20)
    monkeypatch.setattr(memory, "_busy", {"running": 0, "ended": 0, "last_end": 0.0})
    monkeypatch.setattr(memory.time, "monotonic", lambda: now[0])
    return rss, released, now


def test_an_idle_worker_gives_back_what_it_grew_but_never_while_a_task_runs(monkeypatch):
    rss, released, now = idle_worker(monkeypatch, 300, after_release_mb=100, ready_mb=100)
    assert memory.idle_release(0) == 0 and released == []  # nothing ran since the last check
    memory._task_began()
    memory._task_ended()
    memory._task_began()  # a second task still running
    now[0] += 5
    assert memory.idle_release(0) == 0 and released == []
    memory._task_ended()
    assert memory.idle_release(0) == 0 and released == []  # it just ended: not idle yet
    now[0] += memory.IDLE_S
    assert memory.idle_release(0) == 2 and released == [300 << 20]
    now[0] += 5
    assert memory.idle_release(2) == 2 and released == [300 << 20]  # once per burst of tasks


def test_an_idle_worker_gives_back_what_was_freed_since_its_last_release(monkeypatch):
    """Grown by less than a release's worth since the last one, but well over its size when it became ready:
    memory freed after that release (a collect step's, a send burst's) is given back too."""
    rss, released, now = idle_worker(monkeypatch, 102, after_release_mb=100, ready_mb=95)
    memory._task_began()
    memory._task_ended()
    now[0] += memory.IDLE_S
    assert memory.idle_release(0) == 1 and released == []  # 7 MB over its ready size: kept
    monkeypatch.setattr(memory, "_rss_at_start", 80 << 20)
    memory._task_began()
    memory._task_ended()
    now[0] += memory.IDLE_S
    assert memory.idle_release(1) == 2 and released == [102 << 20]  # 22 MB over it: released


def test_a_worker_fixes_the_mmap_threshold():
    assert memory.bound_mmap_threshold() is True  # glibc here (elsewhere: False, nothing set)
