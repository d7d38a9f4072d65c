"""Issue 17 end to end: a run of more tasks than a state keeps inline, on a real Redis and a real worker.

Its results are written apart (chunks beside the state) by the collect step, streamed by the CLI to
stdout and ``--results-file``, and still read whole by ``show``, ``--save-phase-state`` (read back
as ``--load-phase-state`` does) and ``resume``.
"""
import json
import zlib

import pytest
import redis

from conftest import run_cli
from dispatch.store.state import INLINE_RESULTS, load_state_file

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]
N = INLINE_RESULTS + 150
BAD = {"t7", "t500", "t1101"}  # fail (a negative duration); the task after each in its chain is skipped


def breakdown(n: int) -> str:
    return json.dumps({"config": {"max_workers": 8},
                       "tasks": [{"task_id": f"t{i}", "agent": "sleep", "description": f"no-op {i}",
                                  "input_data": {"duration_ms": -1 if f"t{i}" in BAD else 0},
                                  "dependencies": [f"t{i - 1}"] if i % 5 else []} for i in range(n)]})


def test_a_run_with_its_results_apart_prints_saves_shows_and_resumes_as_before(distributed, tmp_path):
    env, prefix = distributed["env"], distributed["prefix"]
    distributed["workers"].start("w1", concurrency=8)
    lines, saved = tmp_path / "results.jsonl", tmp_path / "state.json"
    done = run_cli(["--skip-phases", "0,1", "--results-file", str(lines), "--save-phase-state", str(saved)],
                   stdin=breakdown(N), env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    out = done.json
    run_id, results = out["run_id"], out["results"]
    assert [r["task_id"] for r in results] == [f"t{i}" for i in range(N)]
    failed = sorted(r["task_id"] for r in results if not r["success"] and not r["skipped"])
    skipped = [r for r in results if r["skipped"]]
    assert failed == sorted(BAD) and len(skipped) == 2 + 4 + 3  # each chain of 5 ends at a multiple of 5
    assert all("dependency" in r["error"] for r in skipped)
    assert "3 failed, 9 skipped" in done.stderr and f"dispatch show {run_id}" in done.stderr

    client = redis.Redis.from_url(distributed["redis"].url)
    head = json.loads(zlib.decompress(client.get(f"{prefix}:run:{run_id}")))
    assert "task_results" not in head and head["status"] == "failed"
    assert client.hget(f"{prefix}:run:{run_id}:results", "count") == str(N).encode()

    written = {r["task_id"]: r for r in map(json.loads, lines.read_text().splitlines())}
    assert len(lines.read_text().splitlines()) == N and written == {r["task_id"]: r for r in results}
    assert json.loads(saved.read_text())["task_results"] == results  # one JSON file, results inside

    shown = run_cli(["show", "--json", run_id], env=env)
    assert shown.returncode == 0 and shown.json["task_results"] == results
    assert "t7" in run_cli(["show", run_id], env=env).stdout

    again = load_state_file(saved)  # what --load-phase-state reads, with a person's file's limits
    assert [r.model_dump(mode="json") for r in again.task_results] == results

    resumed = run_cli(["resume", run_id], env=env)
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    assert f"Keeping {N - 12} succeeded task result(s)" in resumed.stderr
    final = resumed.json
    assert final["run_id"] == run_id and [r["task_id"] for r in final["results"]] == [f"t{i}" for i in range(N)]
    kept = {r["task_id"]: r for r in final["results"] if r["success"]}
    assert len(kept) == N - 12 and all(kept[tid] == r for tid, r in
                                      ((r["task_id"], r) for r in results if r["success"]))
