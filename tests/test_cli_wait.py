"""``dispatch wait RUN_ID`` on a real Redis with real workers: the same output and exit code as a run in the
foreground, for a run submitted with ``--no-wait``; a missing run names the store it searched."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli
from pipeline_cases import breakdown, make_workspace

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

VARIABLE = {"worker", "duration_ms", "started_at", "completed_at", "attempts"}  # where and when, not what


def comparable(out: dict) -> dict:
    """A run's JSON without what depends on when and where it ran."""
    return {"success": out["success"], "status": out["status"], "error": out["error"],
            "phases": [(p["phase"], p["success"], p["skipped"]) for p in out["phases_executed"]],
            "timing": [(p["phase"], p["success"], p["skipped"]) for p in out["timing_summary"]["phases"]],
            "results": [{k: v for k, v in r.items() if k not in VARIABLE} for r in out["results"]]}


def log_shape(stderr: str, run_id: str) -> list[str]:
    """The log's lines with the run id and numbers (durations) blanked, and the submit/follow lines left out."""
    lines = [re.sub(r"\d+(\.\d+)?", "N", line.replace(run_id, "RUN")) for line in stderr.splitlines()]
    return [line for line in lines if not re.search(r"Submitting run|Following run|submitted", line)]


@pytest.mark.parametrize("fail", [None, "reader"])
def test_wait_follows_a_no_wait_run_like_the_foreground(distributed, tmp_path, fail):
    distributed["workers"].start("solo")
    env = distributed["env"]
    # long enough (4 x 1.5 s on one 8-thread worker, after the diamond) that wait attaches mid-run
    tasks = json.loads(breakdown(make_workspace(tmp_path / "ws"), fail=fail, n_extra=4, sleep_ms=1500))
    tasks["config"]["trace_dir"] = str(tmp_path / "traces")
    tasks = json.dumps(tasks)

    foreground = run_cli([], stdin=tasks, env=env)
    assert foreground.returncode == (1 if fail else 0), foreground.stderr

    submitted = run_cli(["--no-wait"], stdin=tasks, env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.json["run_id"]
    assert submitted.json["status"] == "submitted"
    assert f"follow it with: python " in submitted.stderr and f"wait {run_id}" in submitted.stderr

    waited = run_cli(["wait", run_id], env=env)
    assert waited.returncode == foreground.returncode, waited.stderr
    assert waited.json["run_id"] == run_id and "Traceback" not in waited.stderr
    assert comparable(waited.json) == comparable(foreground.json)
    assert waited.json["timing_summary"]["total_duration_ms"] > 0
    assert f"Following run {run_id}" in waited.stderr
    # phase 4's block and everything after it, line for line
    assert log_shape(waited.stderr, run_id)[-16:] == log_shape(foreground.stderr, foreground.json["run_id"])[-16:]
    assert f"Following run {run_id} (running;" in waited.stderr  # attached while it ran
    assert ("✗ reader echo" in waited.stderr) == bool(fail)

    # the run's trace is written by whoever followed it to its end
    events = [json.loads(line) for line in (tmp_path / "traces" / f"{run_id}.trace.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert {e["task_id"] for e in events if e["event"] == "task_end"} >= {"schema", "writer"}
    assert all(e["worker"].startswith("solo@") for e in events if e["event"] == "task_start")
    saved = json.loads((tmp_path / "traces" / f"{run_id}.state.json").read_text())
    assert saved["run_id"] == run_id and saved["status"] == ("failed" if fail else "succeeded")

    again = run_cli(["wait", run_id, "-q"], env=env)  # a finished run: its result at once, same exit code
    assert again.returncode == foreground.returncode and again.stderr == ""
    assert comparable(again.json) == comparable(foreground.json)


def test_a_missing_run_names_the_redis_store_and_its_prefix(distributed, tmp_path):
    env = distributed["env"]
    for command in (["wait", "no-such-run"], ["show", "no-such-run"], ["resume", "no-such-run"]):
        done = run_cli(command, env=env, cwd=tmp_path)  # from another folder
        assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr, done.stderr
        assert "no run 'no-such-run' in Redis" in done.stderr
        assert f"(key prefix '{distributed['prefix']}')" in done.stderr
