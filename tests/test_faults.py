"""Faults on real processes and real servers: killed workers, a restarted Redis, stuck agents.

Every agent here is a ``shell`` agent that appends its idempotency key
(``{run_id}:{task_id}:{attempt}``, passed in the agent's environment) to a
side-effect log before it sleeps: the log shows how often a task *ran*, the
results show how often it *counted*.  Redelivery may run a task again; it must
never count twice, lose a task, or hang the chord.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

import redis

from conftest import PYTHON, ROOT, CliResult, run_cli

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(90)]


def write_config(tmp_path: Path, side_effects: Path, seconds: float) -> Path:
    script = f'echo "$DISPATCH_IDEMPOTENCY_KEY@$NODE" >> {side_effects} && sleep {seconds}'
    config = {"agents": {"step": {"kind": "shell", "command": ["sh", "-c", script],
                                  "env_allow": ["PATH", "NODE"]}}}
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(config))
    return path


def breakdown(n: int, max_workers: int, agent: str = "step", timeout_s: float = 60) -> str:
    return json.dumps({"tasks": [{"task_id": f"t{i}", "agent": agent, "description": f"step {i}"}
                                 for i in range(n)],
                       "config": {"max_workers": max_workers, "timeout_seconds": timeout_s}})


def start_cli(env: dict, args: list[str], stdin: str) -> subprocess.Popen:
    """The CLI in the background, following its run while the test breaks things."""
    source = Path(env["DISPATCH_STATE_DIR"]).parent / f"input-{time.monotonic_ns()}.json"
    source.write_text(stdin)
    with open(source) as fh:
        return subprocess.Popen([PYTHON, str(ROOT / "cli.py"), *args], stdin=fh, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=Path(env["DISPATCH_STATE_DIR"]).parent)


def finish(proc: subprocess.Popen, timeout: float = 60) -> CliResult:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the CLI hung:\n{err[-4000:]}") from None
    return CliResult(proc.returncode, out, err)


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    """Idempotency keys of the side effects, in order (``key@node`` lines)."""
    return [line.split("@")[0] for line in path.read_text().split()] if path.exists() else []


def keys_by_node(path: Path) -> dict[str, set[str]]:
    nodes: dict[str, set[str]] = {}
    for line in (path.read_text().split() if path.exists() else []):
        key, _, node = line.partition("@")
        nodes.setdefault(node, set()).add(key)
    return nodes


def assert_each_task_counted_once(out: dict, n: int) -> None:
    ids = [r["task_id"] for r in out["results"]]
    assert sorted(ids) == sorted(f"t{i}" for i in range(n)) and len(set(ids)) == n
    assert all(r["success"] for r in out["results"]), [r for r in out["results"] if not r["success"]]


def pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def test_kill_9_of_a_pool_process_during_phase_4_redelivers_and_counts_each_task_once(distributed, tmp_path):
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 1.2)
    worker = distributed["workers"].start("pf", pool="prefork", concurrency=2)
    cli = start_cli(distributed["env"], ["--config", str(config)], breakdown(6, max_workers=2))
    wait_for(lambda: len(lines(effects)) >= 1, what="an agent task to start")
    time.sleep(0.3)
    victims = pool_children(worker.pid)
    assert len(victims) == 2
    for pid in victims[:1]:
        os.kill(pid, signal.SIGKILL)
    run = finish(cli)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "succeeded"
    assert_each_task_counted_once(out, 6)
    runs = Counter(lines(effects))
    # the killed task ran again under the same idempotency key (same attempt: a redelivery, not a retry)
    assert len(runs) == 6 and sum(runs.values()) >= 7, runs
    assert all(key.startswith(f"{out['run_id']}:t") and key.endswith(":1") for key in runs)
    log = (tmp_path / "pf.log").read_text()
    assert "signal 9" in log or "WorkerLostError" in log, log[-3000:]


def test_kill_9_of_a_whole_worker_node_its_tasks_finish_on_the_survivor(distributed, tmp_path):
    env = distributed["env"]
    env["DISPATCH_VISIBILITY_TIMEOUT_S"] = "3"  # redelivery of a dead node's unacked tasks after 3 s
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 1.0)
    pool = distributed["workers"]
    env["NODE"] = "doomed"  # the pool's workers share this env: each node stamps its side effects
    pool.start("doomed", queues="agents", concurrency=2)
    cli = start_cli(env, ["--config", str(config)], breakdown(8, max_workers=4))
    env["NODE"] = "survivor"
    pool.start("survivor", concurrency=2)  # phases run here; agents spread over both
    wait_for(lambda: "doomed" in keys_by_node(effects), what="the doomed node to run a task")
    pool.kill("doomed")  # SIGKILL to the whole node: nothing acks, nothing says goodbye
    run = finish(cli)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert_each_task_counted_once(out, 8)
    nodes = keys_by_node(effects)
    assert len(Counter(lines(effects))) == 8
    # what the dead node had started was delivered again, after the visibility timeout, to the survivor
    assert nodes["doomed"] and nodes["doomed"] <= nodes["survivor"], nodes
    workers = {r["task_id"]: r["worker"].split("@")[0] for r in out["results"]}
    assert all(workers[key.split(":")[1]] == "survivor" for key in nodes["doomed"]), workers


def shutdown_saving(url: str) -> None:
    """Stop Redis the way a restart does: dump to disk (``--save ""`` or not), then exit."""
    try:
        redis.Redis.from_url(url).shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass


def test_redis_restarted_mid_run_workers_and_cli_reconnect_and_the_run_completes(distributed, tmp_path):
    server = distributed["redis"]
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 0.8)
    distributed["workers"].start("w", concurrency=3)
    cli = start_cli(distributed["env"], ["--config", str(config)], breakdown(9, max_workers=3))
    wait_for(lambda: len(lines(effects)) >= 3, what="phase 4 to be under way")
    shutdown_saving(server.url)
    server.proc.wait(10)
    time.sleep(1.5)
    server.start()  # same port, same directory: the dump is loaded
    run = finish(cli)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    out = json.loads(run.stdout)
    assert_each_task_counted_once(out, 9)


def test_redis_down_longer_than_the_cli_waits_fails_clearly_and_nothing_saved_is_lost(distributed, tmp_path):
    server = distributed["redis"]
    env = {**distributed["env"], "DISPATCH_RECONNECT_TIMEOUT_S": "2"}
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 0.8)
    distributed["workers"].start("w", concurrency=2)
    cli = start_cli(env, ["--config", str(config)], breakdown(6, max_workers=2))
    wait_for(lambda: len(lines(effects)) >= 2, what="phase 4 to be under way")
    shutdown_saving(server.url)
    server.proc.wait(10)
    run = finish(cli, timeout=30)
    server.start()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    out = json.loads(run.stdout)
    run_id = out["run_id"]
    assert f"lost the connection to redis://127.0.0.1:{server.port}/0" in run.stderr
    assert f"dispatch wait {run_id}" in out["error"] and f"dispatch resume {run_id}" in out["error"]
    # the workers carry on once Redis is back; phases saved before the outage are all there
    deadline = time.time() + 40
    while time.time() < deadline:
        shown = run_cli(["show", "--json", run_id], env=env)
        if shown.returncode == 0 and shown.json["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.3)
    state = shown.json
    assert state["status"] == "succeeded", state["status"]
    done = {r["phase"] for r in state["phases_executed"] if r["success"] and not r["skipped"]}
    assert done == {"TASK_PLANNING", "CONTEXT_FILTERING", "PARALLEL_EXECUTION"}
    assert_each_task_counted_once({"results": state["task_results"]}, 6)


def test_redis_restarted_empty_is_reported_instead_of_waiting_forever(distributed, tmp_path):
    server = distributed["redis"]
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 1.0)
    distributed["workers"].start("w", concurrency=2)
    cli = start_cli(distributed["env"], ["--config", str(config)], breakdown(4, max_workers=1))
    wait_for(lambda: len(lines(effects)) >= 1, what="phase 4 to be under way")
    server.stop()  # the fixture's Redis keeps nothing on disk
    server.start()
    run = finish(cli, timeout=40)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "without run" in run.stderr and "appendonly yes" in run.stderr


def stuck_module(tmp_path: Path) -> Path:
    package = tmp_path / "stuckmod"
    package.mkdir()
    (package / "stuck_agent.py").write_text(
        "import time\n\n\ndef hang(task, context, deps):\n    time.sleep(600)\n\n\n"
        "def quick(task, context, deps):\n    return {'ok': task['task_id']}\n\n\n"
        "def stubborn(task, context, deps):\n    while True:\n        try:\n            time.sleep(100)\n"
        "        except BaseException:\n            pass\n")
    return package


def run_on_one_slot(distributed, tmp_path: Path, stuck: str, tasks: list[dict]) -> CliResult:
    """``tasks`` on a single prefork agent slot with a 1 s timeout; ``stuck`` is the stuck agent's callable."""
    env = distributed["env"]
    env["PYTHONPATH"] = str(stuck_module(tmp_path))
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {
        stuck: {"kind": "python", "callable": f"stuck_agent:{stuck}"},
        "quick": {"kind": "python", "callable": "stuck_agent:quick"}}}))
    distributed["workers"].start("phases", queues="phases")
    distributed["workers"].start("one-slot", queues="agents", pool="prefork", concurrency=1)
    document = json.dumps({"tasks": tasks, "config": {"max_workers": 2, "timeout_seconds": 1}})
    return run_cli(["--config", str(config)], stdin=document, env=env, timeout=60)


def test_a_stuck_agent_is_timed_out_and_frees_its_slot(distributed, tmp_path):
    t0 = time.monotonic()
    run = run_on_one_slot(distributed, tmp_path, "hang", [
        {"task_id": "stuck", "agent": "hang", "description": "never returns"},
        {"task_id": "after", "agent": "quick", "description": "needs the slot"}])
    elapsed = time.monotonic() - t0
    assert run.returncode == 1, run.stderr
    results = {r["task_id"]: r for r in run.json["results"]}
    assert not results["stuck"]["success"] and results["stuck"]["error"].startswith("timed out"), results["stuck"]
    assert "soft time limit (6s)" in results["stuck"]["error"]
    assert results["after"]["success"] and results["after"]["output"] == {"ok": "after"}
    assert re.search(r"✗ stuck \S+ .*— timed out", run.stderr)
    assert elapsed < 25, f"the slot was not freed in time ({elapsed:.1f}s)"


def test_an_agent_ignoring_its_soft_limit_is_killed_at_the_hard_limit_and_reported(distributed, tmp_path):
    """The pool kills the process: the chord breaks, the run's outcome comes from the scheduler's records."""
    env = distributed["env"]
    run = run_on_one_slot(distributed, tmp_path, "stubborn", [
        {"task_id": "stuck", "agent": "stubborn", "description": "swallows signals"},
        {"task_id": "after", "agent": "quick", "description": "needs the slot"},
        {"task_id": "child", "agent": "quick", "description": "x", "dependencies": ["stuck"]}])
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    out = run.json
    results = {r["task_id"]: r for r in out["results"]}
    assert results["stuck"]["error"] == "timed out: past its hard time limit, its worker process was killed"
    assert results["after"]["success"]  # the slot was freed
    assert results["child"]["skipped"] and "dependency 'stuck' failed" in results["child"]["error"]
    assert out["status"] == "failed" and re.search(r"✗ stuck \S+ .*— timed out", run.stderr)
    shown = run_cli(["show", "--json", out["run_id"]], env=env).json
    assert shown["status"] == "failed" and len(shown["task_results"]) == 3  # saved, so resumable


@pytest.mark.parametrize("point", ["finish", "sent"])
def test_a_node_dying_in_the_middle_of_a_completion(distributed, tmp_path, point):
    """``a``'s completion is recorded and ``b``, ``c`` are taken, then the node dies before sending them
    (``finish``) or after sending them but before the outbox knows (``sent``).  The redelivered ``a``
    counts nothing twice and sends them from the outbox; a task sent twice runs its agent once (the
    second send finds it claimed); the chord closes."""
    env = distributed["env"]
    env["DISPATCH_VISIBILITY_TIMEOUT_S"] = "3"
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 0.2)
    tasks = [{"task_id": "a", "agent": "step", "description": "root"},
             {"task_id": "b", "agent": "step", "description": "left", "dependencies": ["a"]},
             {"task_id": "c", "agent": "step", "description": "right", "dependencies": ["a"]},
             {"task_id": "d", "agent": "step", "description": "join", "dependencies": ["b", "c"]}]
    marker = tmp_path / "crashed"
    pool = distributed["workers"]
    pool.start("phases", queues="phases", concurrency=2)
    env.update(PYTHONPATH=str(ROOT / "tests"), CRASH_AFTER_TASK="a", CRASH_MARKER=str(marker),
               CRASH_POINT=point, NODE="doomed")
    # one thread: the node cannot fetch b or c while a runs, so what it dies with is a's completion alone
    # (a second thread could start b, and a task whose own worker dies runs again: at least once)
    pool.start("doomed", queues="agents", concurrency=1, app="crash_worker")
    cli = start_cli(env, ["--config", str(config)], json.dumps({"tasks": tasks, "config": {"max_workers": 4}}))
    wait_for(lambda: marker.exists(), what=f"the node to die in a's completion ({point})")
    env["NODE"] = "rescuer"
    pool.start("rescuer", queues="agents", concurrency=2)
    run = finish(cli)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [r["task_id"] for r in out["results"]] == ["a", "b", "c", "d"]
    assert all(r["success"] for r in out["results"]), out["results"]
    runs = Counter(key.split(":")[1] for key in lines(effects))
    assert runs == {"a": 1, "b": 1, "c": 1, "d": 1}, runs  # a's result stood; b and c ran once each
    assert keys_by_node(effects)["doomed"] == {f"{out['run_id']}:a:1"}
    backend = redis.Redis.from_url(distributed["redis"].url)
    sends = [v for v in backend.hgetall(f"{distributed['prefix']}:tasks:{out['run_id']}").values()
             if v in (b"agent:b", b"agent:c")]
    assert len(sends) == 4  # each was given a Celery id twice: by a's script, then by its redelivery
