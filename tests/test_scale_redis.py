"""Scale on a real Redis with a real worker: ``--results-file`` as tasks land, and what a closed run keeps."""
import json
import subprocess
import time
import zlib

import pytest
import redis

from conftest import PYTHON, ROOT, run_cli

pytestmark = [pytest.mark.redis, pytest.mark.timeout(150)]


def breakdown(n: int, sleep_ms: int = 0) -> str:
    return json.dumps({"config": {"max_workers": 4},
                       "tasks": [{"task_id": f"t{i}", "agent": "sleep", "description": f"no-op {i}",
                                  "input_data": {"duration_ms": sleep_ms},
                                  "dependencies": [f"t{i - 1}"] if i % 5 else []} for i in range(n)]})


def test_a_closed_run_keeps_its_compacted_state_and_phase_ids_only_and_the_results_file_has_every_task(
        distributed, tmp_path):
    env, prefix = distributed["env"], distributed["prefix"]
    distributed["workers"].start("w1", concurrency=4)
    lines = tmp_path / "results.jsonl"
    done = run_cli(["--skip-phases", "0,1", "--results-file", str(lines)], stdin=breakdown(60), env=env)
    assert done.returncode == 0, done.stderr
    run_id = done.json["run_id"]
    written = [json.loads(line) for line in lines.read_text().splitlines()]
    assert sorted(r["task_id"] for r in written) == sorted(f"t{i}" for i in range(60))
    by_id = {r["task_id"]: r for r in done.json["results"]}
    assert all(by_id[r["task_id"]]["success"] and r["success"] for r in written)

    client = redis.Redis.from_url(distributed["redis"].url)
    ours = sorted(k.decode() for k in client.scan_iter(f"{prefix}:*{run_id}*")
                  if b"celery-task-meta" not in k)  # Celery's own phase results expire on their own
    lasting = [k for k in ours if not 0 < client.ttl(k) <= 600]  # the agent ledger expires within minutes
    assert sorted(lasting) == sorted([f"{prefix}:run:{run_id}", f"{prefix}:phases:{run_id}",
                                      f"{prefix}:dag:{run_id}:closed"]), {k: client.ttl(k) for k in ours}
    assert not [k for k in ours if ":dag:" in k and not k.endswith(":closed")], ours  # the scheduler: gone
    stored = client.get(f"{prefix}:run:{run_id}")
    assert json.loads(zlib.decompress(stored))["run_id"] == run_id  # compacted
    assert len(stored) < 1024 * 60

    # the run is followed again after it closed: the phase ids are still there, the output the same
    again = run_cli(["wait", run_id, "--results-file", str(tmp_path / "again.jsonl")], env=env)
    assert again.returncode == 0, again.stderr
    assert again.json["results"] == done.json["results"]
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 60


def test_results_land_in_the_file_while_phase_4_runs(distributed, tmp_path):
    """A chain slow enough to span several polls: the file has lines before the run ends."""
    env = {**distributed["env"], "DISPATCH_PROGRESS_INTERVAL_S": "0.2"}
    distributed["workers"].start("w1", concurrency=2)
    lines = tmp_path / "results.jsonl"
    source = tmp_path / "in.json"
    source.write_text(json.dumps({"config": {"max_workers": 1},
                                  "tasks": [{"task_id": f"t{i}", "agent": "sleep", "description": "s",
                                             "input_data": {"duration_ms": 300},
                                             "dependencies": [f"t{i - 1}"] if i else []} for i in range(8)]}))
    proc = subprocess.Popen([PYTHON, str(ROOT / "cli.py"), "--skip-phases", "0,1", "-f", str(source),
                             "--results-file", str(lines)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counts = set()  # how many lines the file had, sampled while the CLI ran
    while proc.poll() is None:
        if lines.exists():
            counts.add(len(lines.read_text().splitlines()))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert any(0 < c < 8 for c in counts), counts  # lines landed while later tasks had not run yet
    assert [json.loads(line)["task_id"] for line in lines.read_text().splitlines()] == [f"t{i}" for i in range(8)]
