"""The soak bench (bench/soak.py, issue 17): its bookkeeping on fakes, and a short real form.

The long form (30 min) is a bench by hand, ``bench/run_all.py --slow``; here 40 s of runs on two
real workers while one is restarted (TERM, then -9), which must lose nothing."""
from __future__ import annotations

import shutil

import pytest

from bench.soak import Restart, Sample, SoakReport, count_reruns, rss_trends, soak, summary


def test_a_rerun_is_explained_only_by_an_execution_on_a_killed_worker():
    runs = {("r1", "t0"): [10], ("r1", "t1"): [10, 20], ("r1", "t2"): [20, 30], ("r2", "t0"): [30, 30, 10]}
    assert count_reruns(runs, killed={10}) == (4, 2)  # t1: its first run was on 10; r2/t0: one of two
    assert count_reruns(runs, killed=set()) == (4, 0)


def test_rss_trend_per_worker_starts_after_the_warmup_of_each_incarnation():
    report = SoakReport(restarts=[Restart(t=50, worker="w1", pid=1, signal="TERM", seconds=2, started="w1r1")])
    for t in range(0, 200, 10):
        rss = {"w0": 80 + t / 10}  # 1 MB per 10 s: 6 MB/min
        rss.update({"w1": 90.0} if t < 50 else {"w1r1": 70.0})
        report.samples.append(Sample(t=t, rss=rss, redis_used=1000 + t, redis_keys=1, tasks_done=t))
    trends = rss_trends(report, warmup_s=30)
    assert trends["w0"]["slope_mb_per_min"] == pytest.approx(6.0)
    assert trends["w0"]["from_s"] == 30 and trends["w0"]["first_mb"] == 83
    assert trends["w1r1"]["from_s"] == 80 and trends["w1r1"]["slope_mb_per_min"] == 0
    assert "w1" not in trends  # fewer than 3 samples after its warm-up
    assert summary(report, warmup_s=30)["redis"]["growth_per_task_b"] == 1.0


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_soak_loses_nothing_while_a_worker_is_restarted_and_killed():
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not found")
    report = soak(minutes=0.4, restart_every=7, sample_every=2, visibility_s=6, kill_every=2,
                  stall_check_s=2, quiet=True)
    s = summary(report, warmup_s=5)
    print(s)
    assert s["ok"], s["lost"]
    assert report.runs >= 5 and report.lost == [] and report.unexplained_reruns == 0
    assert [r.signal for r in report.restarts][:2] == ["TERM", "KILL"], report.restarts
    assert report.shell_executions >= 12 * report.by_kind.get("shell", 0)
    assert "bench0" in s["rss"] and s["redis"]["keys"][-1] > s["redis"]["keys"][0]
