"""Ctrl-C and SIGTERM in embedded mode: agents stopped, finished results saved, the run cancelled and
resumable, no process left behind (real CLI processes, real shell agents)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import PYTHON, ROOT, base_env, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def leftovers(token: str) -> list[str]:
    """Processes whose command line carries ``token`` (the agents of this test only)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if token in cmdline and state not in ("Z", "X"):
                found.append(cmdline)
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_an_embedded_run_saves_it_and_resume_finishes_it(tmp_path, signum):
    token = f"dispatch-signal-{uuid.uuid4().hex[:8]}"
    started, go = tmp_path / "started", tmp_path / "go"
    started.mkdir()
    # the slow agent waits for "go" (at most 60 s): before the signal it never comes; on resume it is there
    slow = f'touch {started}/{{task_id}}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo {token} {{task_id}}'
    config = tmp_path / "agents.toml"
    config.write_text(f'[agents.slow]\nkind = "shell"\ncommand = ["sh", "-c", {json.dumps(slow)}]\n'
                      f'kill_grace_s = 1\n')
    tasks = {"tasks": [{"task_id": "quick", "agent": "echo", "description": "done at once"},
                       # after "quick": when both have started, its result is recorded (it cannot still be
                       # waiting for a thread when the signal comes, which the run would rightly report as not run)
                       {"task_id": "s1", "agent": "slow", "description": "slow one", "dependencies": ["quick"]},
                       {"task_id": "s2", "agent": "slow", "description": "slow two", "dependencies": ["quick"]},
                       {"task_id": "after", "agent": "echo", "description": "needs s1", "dependencies": ["s1"]}]}
    env = base_env(tmp_path)
    state_file = tmp_path / "saved.json"
    breakdown = tmp_path / "tasks.json"
    breakdown.write_text(json.dumps(tasks))
    proc = subprocess.Popen([PYTHON, str(ROOT / "cli.py"), "--config", str(config), "-f", str(breakdown),
                             "--save-phase-state", str(state_file)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while len(os.listdir(started)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(started)) == ["s1", "s2"], proc.stderr.read() if proc.poll() is not None else ""
    t0 = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 128 + signum, stderr
    assert took < 10, f"stopping took {took:.1f}s"
    assert "Traceback" not in stderr
    out = json.loads(stdout)
    run_id = out["run_id"]
    assert out["status"] == "cancelled" and not out["success"]
    results = {r["task_id"]: r for r in out["results"]}
    assert results["quick"]["success"] and not results["s1"]["success"] and not results["after"]["success"], \
        json.dumps(results["quick"]) + "\n" + stderr
    assert f"resume {run_id}" in stderr
    assert json.loads(state_file.read_text())["status"] == "cancelled"
    time.sleep(0.5)
    assert leftovers(token) == [] and leftovers(str(go)) == []
    shown = run_cli(["show", "--json", run_id], env=env)
    assert shown.json["status"] == "cancelled"

    go.touch()
    resumed = run_cli(["resume", run_id], env=env, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    final = {r["task_id"]: r for r in resumed.json["results"]}
    assert all(r["success"] for r in final.values()), final
    assert final["quick"]["completed_at"] == results["quick"]["completed_at"]  # kept, not run again
    assert final["s1"]["output"]["stdout"].strip() == f"{token} s1"
