"""The chaos run's short form (bench/chaos.py has the long one): workers killed with -9, Redis restarted
with AOF, a worker paused, phase 4 delivered twice; every task gets a result and no agent runs twice
except where its own worker was killed."""
from __future__ import annotations

import shutil

import pytest

from bench.chaos import run_chaos

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_dag_survives_killed_workers_a_redis_restart_a_pause_and_a_redelivered_phase(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not found")
    # agents of 0.3-0.8 s: 80 of them outlast the faults (of 0.05-0.25 s they were done before the first kill)
    report = run_chaos(tmp_path, n_tasks=80, workers=3, kills=2, seed=7, visibility_s=5, timeout_s=200,
                       sleep_s=(0.3, 0.8))
    print(report)
    assert report.exit_code == 0, report.stderr_tail
    assert report.results == report.succeeded == 80
    assert len([f for f in report.faults if f.startswith("killed")]) == 2, report.faults
    assert "restarted Redis (AOF)" in report.faults and any(f.startswith("paused") for f in report.faults)
    assert "delivered phase 4 a second time" in report.faults, report.faults
    assert report.unexplained_reruns == 0, report
    assert report.executions == 80 + sum(report.reruns.values())
