"""The same pipeline on a real Redis with real ``celery -A worker worker`` processes."""
from __future__ import annotations

import json
import time

import pytest
import redis

from conftest import run_cli
from dispatch.store.state import unpack_state
from pipeline_cases import assert_guide_output_shape, breakdown, executed, make_workspace

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]


def cli(distributed, *args, stdin=None):
    return run_cli(list(args), stdin=stdin, env=distributed["env"])


def test_guide_examples_on_redis_with_two_workers(distributed, tmp_path):
    distributed["workers"].start("alpha")
    distributed["workers"].start("beta")
    tasks = breakdown(make_workspace(tmp_path / "ws"), n_extra=16, sleep_ms=150)

    state_file = tmp_path / "validation_debug.json"
    first = cli(distributed, "--stop-after-phase", "1", "--enable-context", "--enable-quorum",
                "--save-phase-state", str(state_file), stdin=tasks)
    assert first.returncode == 0, first.stderr
    assert executed(first.json) == ["CONTEXT_GATHERING", "QUORUM_VALIDATION"]
    assert json.loads(state_file.read_text())["global_context"]["items"]

    run = cli(distributed, "--load-phase-state", str(state_file), "--skip-phases", "0,1", stdin=tasks)
    assert run.returncode == 0, run.stderr
    out = run.json
    assert_guide_output_shape(out)
    assert executed(out)[-3:] == ["TASK_PLANNING", "CONTEXT_FILTERING", "PARALLEL_EXECUTION"]
    assert len(out["results"]) == 20 and all(r["success"] for r in out["results"])
    workers = {r["worker"].split("@")[0] for r in out["results"]}
    assert workers == {"alpha", "beta"}, f"agent tasks ran on {workers}"
    # the run's state is in the Redis store under the deployment's prefix
    client = redis.Redis.from_url(distributed["redis"].url)
    stored = json.loads(unpack_state(client.get(f"{distributed['prefix']}:run:{out['run_id']}"), "run"))
    assert stored["status"] == "succeeded" and len(stored["task_results"]) == 20


def test_failure_completes_the_chord_and_exits_1(distributed, tmp_path):
    distributed["workers"].start("solo")
    run = cli(distributed, stdin=breakdown(make_workspace(tmp_path / "ws"), fail="reader"))
    assert run.returncode == 1, run.stderr
    results = {r["task_id"]: r for r in run.json["results"]}
    assert results["reader"]["success"] is False and results["tests"]["skipped"]
    assert results["writer"]["success"]


def test_no_wait_returns_the_run_id_and_the_run_finishes(distributed, tmp_path):
    distributed["workers"].start("solo")
    submitted = cli(distributed, "--no-wait", stdin=breakdown(make_workspace(tmp_path / "ws")))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.json["run_id"]
    deadline = time.time() + 60
    while time.time() < deadline:
        shown = cli(distributed, "show", "--json", run_id)
        if shown.returncode == 0 and shown.json["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert shown.json["status"] == "succeeded"
    assert len(shown.json["task_results"]) == 4


def test_only_agents_queue_workers_run_agents(distributed, tmp_path):
    distributed["workers"].start("phases", queues="phases")
    distributed["workers"].start("agents", queues="agents")
    run = cli(distributed, "--skip-phases", "0,1", stdin=breakdown(make_workspace(tmp_path / "ws"), n_extra=4))
    assert run.returncode == 0, run.stderr
    assert {r["worker"].split("@")[0] for r in run.json["results"]} == {"agents"}


def comparable(results: list[dict]) -> list[dict]:
    """What must not depend on where a task ran: everything but worker, timing and attempts."""
    drop = {"worker", "duration_ms", "started_at", "completed_at", "attempts"}
    return [{k: v for k, v in r.items() if k not in drop} for r in results]


def test_results_are_identical_embedded_and_on_redis(distributed, tmp_path, cli):
    distributed["workers"].start("alpha")
    distributed["workers"].start("beta")
    tasks = breakdown(make_workspace(tmp_path / "ws"), fail="reader", n_extra=3)
    on_redis = run_cli(["--skip-phases", "0,1"], stdin=tasks, env=distributed["env"])
    embedded = cli("--skip-phases", "0,1", stdin=tasks)
    assert on_redis.returncode == embedded.returncode == 1
    assert comparable(on_redis.json["results"]) == comparable(embedded.json["results"])


def test_max_workers_1_serialises_across_workers(distributed, tmp_path):
    from datetime import datetime

    distributed["workers"].start("alpha")
    distributed["workers"].start("beta")
    document = json.loads(breakdown(make_workspace(tmp_path / "ws"), n_extra=6, sleep_ms=80))
    document["config"]["max_workers"] = 1
    run = run_cli(["--skip-phases", "0,1"], stdin=json.dumps(document), env=distributed["env"])
    assert run.returncode == 0, run.stderr

    def ts(text):
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
    spans = sorted((ts(r["started_at"]), ts(r["completed_at"])) for r in run.json["results"])
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.002, "two agent tasks overlapped with max_workers=1"
