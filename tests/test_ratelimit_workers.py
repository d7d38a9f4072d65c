"""Provider rate limits across real workers: two ``celery worker`` processes on a private Redis, ``llm``
tasks calling a real local OpenAI-compatible server that records when each request came and answered.

One Redis and one pair of workers serve the module (each test names its own provider, so their
limiter state is apart); each test runs the CLI against them with its own config file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from llm_server import Reply, answer_text, llm_server  # noqa: F401

from conftest import TESTS, base_env, run_cli
from dispatch.testing import RedisServer, WorkerPool

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not found")
    root = tmp_path_factory.mktemp("ratelimit")
    server = RedisServer(root)
    server.start()
    env = base_env(root, DISPATCH_BROKER_URL=server.url, DISPATCH_KEY_PREFIX="dispatch-test-ratelimit")
    pool = WorkerPool(env, root, cwd=TESTS)
    try:
        pool.start("alpha", concurrency=4)
        pool.start("beta", concurrency=4)
        yield {"env": env, "root": root}
    finally:
        pool.stop_all()
        server.stop()


def run(cluster, tmp_path: Path, server, limits: dict, n_tasks: int):
    name = tmp_path.name.replace("[", "-").replace("]", "")[:60]
    config = {"providers": {name: limits},
              "agents": {"writer": {"kind": "llm", "provider": "openai", "model": "m",
                                    "base_url": server.openai_base_url, "provider_limit": name}}}
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps(config))
    tasks = [{"task_id": f"t{i}", "agent": "writer", "description": f"Write part {i}"} for i in range(n_tasks)]
    request = json.dumps({"user_prompt": "parts", "tasks": tasks, "config": {"max_workers": 8, "timeout_seconds": 60}})
    result = run_cli(["--config", str(path), "--skip-phases", "0,1"], stdin=request,
                     env={**cluster["env"], "DISPATCH_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.json
    assert all(r["success"] for r in out["results"]), out["results"]
    return out


def workers_of(out) -> set[str]:
    return {r["worker"].split("@")[0] for r in out["results"]}


def test_requests_per_minute_holds_across_two_workers(cluster, tmp_path, llm_server):
    llm_server.fallback = answer_text("part", usage=(20, 5))
    out = run(cluster, tmp_path, llm_server, {"requests_per_minute": 120}, n_tasks=9)
    times = sorted(r.at for r in llm_server.requests)
    assert len(times) == 9 and workers_of(out) == {"alpha", "beta"}
    # 120 a minute is 2 a second, granted evenly: no second (less 100 ms for the arrivals' jitter on a
    # busy machine) holds a third request (unlimited, all 9 come within ~0.1 s)
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 0.9) <= 2, [round(t - times[0], 3) for t in times]
    assert times[-1] - times[0] >= 8 * 0.5 - 0.2


def test_retry_after_holds_off_every_worker(cluster, tmp_path, llm_server):
    answered = []

    def respond(recorded):
        answered.append(recorded)
        if len(answered) == 2:  # the second request is told to come back in 2 s
            return Reply(body={"error": {"message": "rate limited"}}, status=429, headers={"retry-after": "2"})
        return answer_text("part")

    llm_server.fallback = respond
    out = run(cluster, tmp_path, llm_server, {"requests_per_minute": 600}, n_tasks=6)
    requests = sorted(llm_server.requests, key=lambda r: r.at)
    [limited] = [r for r in requests if r.status == 429]
    after = [r.at - limited.answered_at for r in requests if r.at > limited.at]
    assert len(requests) == 7 and len(after) == 5  # the limited task ran again, every other task once
    assert min(after) >= 1.98, after  # no request reached the server for 2 s, from either worker
    assert max(r["attempts"] for r in out["results"]) == 2
    assert workers_of(out) == {"alpha", "beta"}


def test_max_concurrency_is_never_exceeded(cluster, tmp_path, llm_server):
    llm_server.fallback = answer_text("part", delay_s=0.3)
    out = run(cluster, tmp_path, llm_server, {"max_concurrency": 2}, n_tasks=8)
    assert len(llm_server.requests) == 8 and workers_of(out) == {"alpha", "beta"}
    assert llm_server.max_in_flight == 2  # 8 worker threads were free: the limit, reached and held
