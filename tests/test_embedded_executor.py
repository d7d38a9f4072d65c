"""Embedded phase 4 on the in-process executor (``runtime/embedded_executor.py``) against the Celery chord path.

Real embedded runs in this process (the private redis-server or fakeredis, the
in-process worker): the same DAG gives the same results, states and attempts
both ways; a transient failure is retried with its spend carried; an exception
escaping an agent task fails phase 4 the way a broken chord does; the event-woken
broker (``runtime/embedded_transport.py``) delivers without its polling sleep.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import pytest

from dispatch.config import DispatchConfig, Settings
from dispatch.models import ExecutionPhase, PhaseConfig
from dispatch.pipeline.inputs import validate_input
from dispatch.pipeline.prepare import prepare_state
from dispatch.runtime import embedded_executor, embedded_transport
from dispatch.runtime.client import Runner
from dispatch.runtime.embedded import silence_worker_logs

CALLS: Counter = Counter()


class Flaky(Exception):
    transient = True


def flaky_once(task, context, deps):
    """Fails transiently on its first call per task, then answers (a python agent)."""
    CALLS[task["task_id"]] += 1
    if CALLS[task["task_id"]] == 1:
        raise Flaky("upstream 503")
    return {"id": task["task_id"], "deps": sorted(deps)}


def answer(task, context, deps):
    if task["task_id"] == "bad":
        raise ValueError("no")
    return {"id": task["task_id"], "deps": sorted(deps)}


AGENTS = {"py": {"kind": "python", "callable": f"{__name__}:answer"},
          "flaky": {"kind": "python", "callable": f"{__name__}:flaky_once"}}


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPATCH_BROKER_URL", raising=False)
    monkeypatch.setenv("DISPATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    silence_worker_logs()
    return Runner(Settings.from_env())


def run(runner, tasks, max_workers=4):
    document = {"user_prompt": "executor test", "config": {"max_workers": max_workers, "timeout_seconds": 30},
                "tasks": tasks}
    state = prepare_state(validate_input(document), PhaseConfig(skip_phases=[0, 1]),
                          DispatchConfig.model_validate({"agents": AGENTS, "workspace": {"isolation": "shared"}}),
                          None).state
    return runner.run(state)


def task(tid, deps=(), agent="py"):
    return {"task_id": tid, "agent": agent, "description": f"task {tid}", "dependencies": list(deps)}


# a diamond with a failure in the middle: its dependents are skipped, the rest runs
DAG = [task("a"), task("b", ["a"]), task("c", ["a"]), task("bad", ["a"]), task("d", ["b", "c"]),
       task("e", ["bad"]), task("f", ["e"]), *[task(f"w{i}") for i in range(12)]]


def outcome(state):
    phase = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    results = {r.task_id: (r.success, r.output, r.error, r.attempts, r.skipped)
               for r in state.task_results}
    return state.status, phase.success, results


def test_the_executor_and_the_chord_give_the_same_run(runner, monkeypatch):
    used = []
    real = embedded_executor.run_phase_4
    monkeypatch.setattr(embedded_executor, "run_phase_4", lambda *a: used.append(1) or real(*a))
    inline = run(runner, DAG)
    assert used == [1]  # phase 4 ran on the executor
    monkeypatch.setenv("DISPATCH_EMBEDDED_EXECUTOR", "celery")
    chord = run(runner, DAG)
    assert used == [1]  # and here on the chord
    assert outcome(inline) == outcome(chord)
    status, _, results = outcome(inline)
    assert status == "failed"
    assert results["d"][:2] == (True, {"id": "d", "deps": ["b", "c"]})
    assert results["bad"][0] is False and "no" in results["bad"][2]
    assert results["e"][0] is False and results["f"][0] is False  # never ran: their dependency failed
    # the worker named in each result is the embedded worker, both ways
    assert {r.worker for r in inline.task_results if r.worker} == {r.worker for r in chord.task_results if r.worker}


def test_a_transient_failure_is_retried_after_its_backoff_on_the_executor(runner, monkeypatch):
    monkeypatch.setattr("dispatch.tasks.agents.TRANSIENT_BACKOFF_S", 0.05)
    CALLS.clear()
    state = run(runner, [task("x", agent="flaky"), task("y", ["x"], agent="flaky")])
    assert state.status == "succeeded"
    by_id = {r.task_id: r for r in state.task_results}
    assert by_id["x"].attempts == 2 and by_id["y"].attempts == 2
    assert by_id["y"].output == {"id": "y", "deps": ["x"]}
    assert CALLS == {"x": 2, "y": 2}


class FakeAgentTask:
    """The agent task's surface the executor uses (a request stack and ``run``)."""

    def __init__(self, run) -> None:
        self.requests: list = []
        self._run = run

    def push_request(self, **request) -> None:
        self.requests.append(request)

    def pop_request(self) -> None:
        pass

    def run(self, run_id, task_id, **kwargs):
        return self._run(self.requests[-1], task_id)


def test_an_exception_escaping_a_task_fails_the_phase_like_a_broken_chord():
    def body(request, task_id):
        if task_id == "boom":
            raise ConnectionError("redis went away")
        if task_id == "a":  # a completion unblocking two more
            request["dispatch_inline"].submit("boom", "cid-boom", None)
            request["dispatch_inline"].submit("c", "cid-c", None)

    inline = embedded_executor.InlineRun(FakeAgentTask(body), "r1", threads=2)
    inline.submit("a", "cid-a", 10.0)
    with pytest.raises(ConnectionError, match="went away"):
        inline.run("embedded@test")


def test_the_request_is_the_workers_with_the_same_id_on_a_retry():
    from celery.exceptions import Retry

    seen = []

    def body(request, task_id):
        seen.append((request["id"], request["retries"], request["timelimit"], request["hostname"]))
        if request["retries"] == 0:
            raise Retry(when=0.01)

    inline = embedded_executor.InlineRun(FakeAgentTask(body), "r1", threads=1)
    inline.submit("a", "cid-a", 10.0)
    inline.run("embedded@test")
    assert seen == [("cid-a", 0, (20.0, 15.0), "embedded@test"), ("cid-a", 1, (20.0, 15.0), "embedded@test")]


def test_the_embedded_broker_wakes_its_consumer_on_a_publish():
    from kombu import Connection

    with Connection(transport=embedded_transport.Transport) as conn:
        queue = conn.SimpleQueue("wake-test")
        got: list[float] = []

        def consume():
            message = queue.get(timeout=5)
            got.append(time.perf_counter())
            message.ack()

        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.2)  # the consumer waits now
        sent = time.perf_counter()
        queue.put({"x": 1})
        thread.join(5)
        queue.close()
    assert got, "nothing was delivered"
    # kombu's memory transport polls; this one is woken: well under its safety poll
    assert got[0] - sent < embedded_transport.SAFETY_POLL_S, got[0] - sent


def test_an_embedded_run_does_not_import_an_http_client_it_does_not_use():
    import subprocess

    code = ("import sys, dispatch.cli.execute, dispatch.runtime.client, dispatch.runtime.embedded_executor; "
            "print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # httpx (and pygments under it) load where a call is made


def test_a_whole_run_task_releases_memory_only_when_the_process_grew(monkeypatch):
    from dispatch.runtime import memory

    rss, released = [100 << 20], []
    monkeypatch.setattr(memory, "rss_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "release", lambda: released.append(rss[0]))
    monkeypatch.setattr(memory, "_rss_after_release", 100 << 20)
    phase = type("T", (), {"name": "dispatch.phase_4_parallel_execution"})()
    agent = type("T", (), {"name": "dispatch.agent"})()
    memory._after_task(task=phase)  # a small run: no full collection
    rss[0] = 300 << 20
    memory._after_task(task=agent)  # never after an agent task
    assert released == []
    memory._after_task(task=phase)  # a big one: collected and trimmed
    assert released == [300 << 20]


def states_held_by_phase_frames() -> list[str]:
    """The frames of dispatch's task modules on this thread's stack that hold a ``PhaseState`` in a local."""
    import inspect

    from dispatch.models import PhaseState
    return [f"{info.frame.f_code.co_name}:{name}" for info in inspect.stack()
            if info.frame.f_globals.get("__name__", "").startswith("dispatch.tasks")
            for name, value in info.frame.f_locals.items() if isinstance(value, PhaseState)]


@pytest.mark.parametrize("executor", ["inline", "celery"])
def test_phase_4_fans_out_from_frames_that_do_not_hold_the_run_state(runner, monkeypatch, executor):
    """``Task.replace`` ends in ``Ignore``, whose traceback keeps its frames' locals for as long as Celery keeps
    the exception; the inline executor runs the whole phase under its caller's frames.  A frame that held the
    state there kept a 100k-task run's state (~380 MB) alive in the worker through phase 4."""
    from celery.app.task import Task

    held = []
    if executor == "inline":
        real_run = embedded_executor.run_phase_4
        monkeypatch.setattr(embedded_executor, "run_phase_4",
                            lambda *a: held.append(states_held_by_phase_frames()) or real_run(*a))
    else:
        monkeypatch.setenv("DISPATCH_EMBEDDED_EXECUTOR", "celery")
        real_replace = Task.replace
        monkeypatch.setattr(Task, "replace", lambda self, sig: held.append(states_held_by_phase_frames())
                            or real_replace(self, sig))
    state = run(runner, [task("a"), task("b", ["a"]), task("c")])
    assert state.status == "succeeded" and len(state.task_results) == 3
    assert held == [[]]
