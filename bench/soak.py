"""The soak (issue 17): runs back to back for a long time while a worker is restarted every few minutes.
Does anything get lost, does anything run twice, do the workers' RSS and Redis stay flat?

    .venv/bin/python bench/soak.py [--minutes 30] [--tasks 200000] [--restart-every 180] [--json FILE]

A private ``redis-server`` (AOF on) and two real workers (2 x 4 threads).  One driver submits runs
one after another through ``Runner`` (the client the CLI uses): flat no-op runs, random DAGs of short
sleeps with dependencies, and small DAGs of shell agents that log each execution (run, task, worker
pid).  Worker ``bench0`` lives for the whole soak (its RSS over the full length is the "flat" figure);
worker ``bench1`` is restarted every ``--restart-every`` seconds, gracefully (SIGTERM: warm shutdown)
twice, then with -9 the third time.  A sampler records each worker's RSS and Redis ``used_memory`` and
key count.  The soak ends after ``--minutes`` or ``--tasks`` tasks, whichever comes first.

At the end every run must have succeeded with a successful result for every task, and a shell agent
may have run twice only where an earlier execution was on a worker killed with -9.  Exit 1 otherwise.
Not in CI (``bench/run_all.py --slow`` runs it); every server is its own, on loopback.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.bench_scale import rss_mb  # noqa: E402
from bench.cluster import Cluster, cluster_parts  # noqa: E402
from dispatch.config import DispatchConfig  # noqa: E402
from dispatch.models import PhaseConfig  # noqa: E402
from dispatch.pipeline.inputs import validate_input  # noqa: E402
from dispatch.pipeline.prepare import prepare_state  # noqa: E402
from dispatch.runtime.client import Runner  # noqa: E402

CONCURRENCY = 4
# a -9'd worker's unacked messages come back after this: above any task's run time here (the agents' 20 s
# limit; the workers still warn against the default 300 s run timeout, which no soak run uses)
VISIBILITY_S = 60
KILL_EVERY = 3  # every third restart is a -9, the others a graceful TERM
TERM_WAIT_S = 90  # a warm shutdown finishes its running tasks first


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss: dict[str, float]  # worker name -> MB
    redis_used: int
    redis_keys: int
    tasks_done: int


@dataclass
class Restart:
    t: float
    worker: str
    pid: int
    signal: str
    seconds: float  # from the signal to the new worker being ready
    started: str


@dataclass
class SoakReport:
    minutes: float = 0.0
    runs: int = 0
    tasks: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # what went wrong, one line per run
    restarts: list[Restart] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    shell_executions: int = 0
    reruns: int = 0
    reruns_explained: int = 0
    run_seconds_max: float = 0.0

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / max(self.minutes * 60, 1e-9)

    @property
    def unexplained_reruns(self) -> int:
        return self.reruns - self.reruns_explained

    @property
    def ok(self) -> bool:
        return not self.lost and self.unexplained_reruns == 0 and self.runs > 0


def shell_config(log: Path) -> DispatchConfig:
    # $PPID: the worker process that ran the agent (threads pool), to tell a killed worker's re-runs apart
    script = f'sleep {{input.s}}; echo "$DISPATCH_RUN_ID $DISPATCH_TASK_ID $PPID" >> {log}; echo ok'
    return DispatchConfig.model_validate({"agents": {"logged": {"kind": "shell", "command": ["sh", "-c", script]}}})


def document(kind: str, rng: random.Random, workspace: Path) -> dict:
    """One run's input: "flat" 300 no-ops, "dag" 120 sleeps of 0-20 ms with up to 3 dependencies each,
    "shell" 12 logging shell agents of 50-400 ms with up to 2 dependencies each."""
    if kind == "flat":
        tasks = [{"task_id": f"t{i}", "agent": "sleep", "description": f"no-op {i}", "input_data": {"duration_ms": 0}}
                 for i in range(300)]
    elif kind == "dag":
        tasks = [{"task_id": f"t{i}", "agent": "sleep", "description": f"sleep {i}",
                  "input_data": {"duration_ms": rng.randint(0, 20)},
                  "dependencies": sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 3))}) if i else []}
                 for i in range(120)]
    else:
        tasks = [{"task_id": f"t{i}", "agent": "logged", "description": f"step {i}",
                  "input_data": {"s": f"{rng.uniform(0.05, 0.4):.3f}"},
                  "dependencies": sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []}
                 for i in range(12)]
    # the workspace: a plain directory (the checkout is a git tree, which distributed workers cannot read)
    return {"user_prompt": f"soak {kind}", "workspace_path": str(workspace), "tasks": tasks, "config": {"max_workers": 2 * CONCURRENCY * 2,
                                                                      "timeout_seconds": 20}}


def check_run(final, doc: dict, kind: str) -> Optional[str]:
    """None when the run succeeded with one successful result per task, else what is wrong."""
    if final is None:
        return f"{kind}: no final state"
    wanted = {t["task_id"] for t in doc["tasks"]}
    results = {r.task_id: r for r in final.task_results}
    missing = wanted - results.keys()
    failed = sorted(t for t, r in results.items() if not r.success)
    if final.status != "succeeded" or missing or failed:
        return (f"{kind} run {final.run_id}: status {final.status}, {len(missing)} task(s) without a result "
                f"{sorted(missing)[:5]}, failed {failed[:5]} {[results[t].error for t in failed[:2]]}")
    return None


def run_one(runner: Runner, config: DispatchConfig, doc: dict, timeout_s: float):
    """The run's final state, or raises: ``Runner.run`` in a thread so a run that never ends is seen."""
    state = prepare_state(validate_input(doc), PhaseConfig(skip_phases=[0, 1]), config, None).state
    box: dict = {}

    def go() -> None:
        try:
            box["final"] = runner.run(state)
        except BaseException as exc:  # noqa: BLE001 - reported as a lost run
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=go, daemon=True, name=f"run-{state.run_id}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"run {state.run_id} did not finish in {timeout_s:.0f} s")
    if "error" in box:
        raise RuntimeError(box["error"])
    return box["final"]


class Restarter(threading.Thread):
    """Restarts worker ``bench1`` every ``every`` seconds: TERM, TERM, -9, ... (a new node each time)."""

    def __init__(self, parts: Cluster, every: float, t0: float, stop: threading.Event, killed: set[int],
                 restarts: list[Restart], kill_every: int = KILL_EVERY) -> None:
        super().__init__(daemon=True, name="restarter")
        self.kill_every = kill_every
        self.parts, self.every, self.t0, self.stop, self.killed, self.restarts = parts, every, t0, stop, killed, restarts
        self.current = "bench1"

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.every):
            n += 1
            hard = n % self.kill_every == 0
            proc = self.parts.pool.procs[self.current]
            began = time.monotonic()
            if hard:
                self.killed.add(proc.pid)  # before the kill: a re-run may be logged the moment it dies
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(TERM_WAIT_S)
                except subprocess.TimeoutExpired:
                    self.killed.add(proc.pid)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(15)
                    hard = True  # said as such in the report: it did not stop in time
            new = f"bench1r{n}"
            self.parts.pool.start(new, concurrency=CONCURRENCY, app="bench.worker_app")
            self.restarts.append(Restart(round(began - self.t0, 1), self.current, proc.pid,
                                         "KILL" if hard else "TERM", round(time.monotonic() - began, 1), new))
            self.current = new


def sample(parts: Cluster, client: redis.Redis, t0: float, tasks_done: int) -> Sample:
    rss = {}
    for name, proc in list(parts.pool.procs.items()):
        if proc.poll() is None:
            try:
                mb = rss_mb(proc.pid)
            except OSError:  # it just exited (a restart)
                continue
            if mb > 0:  # 0: a process that exited and is not reaped yet has no VmRSS line
                rss[name] = round(mb, 1)
    info = client.info("memory")
    return Sample(round(time.monotonic() - t0, 1), rss, int(info["used_memory"]), int(client.dbsize()), tasks_done)


def executions(log: Path) -> dict[tuple[str, str], list[int]]:
    """(run id, task id) -> the pids of the workers that ran it, one per logged execution."""
    found: dict[tuple[str, str], list[int]] = {}
    for line in (log.read_text().splitlines() if log.exists() else []):
        parts = line.split()
        if len(parts) == 3:
            found.setdefault((parts[0], parts[1]), []).append(int(parts[2]))
    return found


def count_reruns(runs: dict[tuple[str, str], list[int]], killed: set[int]) -> tuple[int, int]:
    """(extra executions, those explained): an extra execution is explained by an execution of the same
    agent on a worker killed with -9.  Order-free: the line is written as the agent ends, and a killed
    worker's orphaned shell may still write its line after the re-run's."""
    extra = explained = 0
    for pids in runs.values():
        more = len(pids) - 1
        if more > 0:
            extra += more
            explained += min(more, sum(1 for pid in pids if pid in killed))
    return extra, explained


def soak(minutes: float = 30, max_tasks: int = 200_000, restart_every: float = 180, seed: int = 1,
         sample_every: float = 10, run_timeout_s: float = 300, quiet: bool = False,
         visibility_s: int = VISIBILITY_S, kill_every: int = KILL_EVERY,
         stall_check_s: Optional[float] = None) -> SoakReport:
    """``stall_check_s``: the workers' stall watchdog interval (default 30 s): a -9 that loses a message costs
    a run about three of them (a resend, then two quiet looks before the watchdog closes the broken chord)."""
    rng = random.Random(seed)
    report = SoakReport()
    env = {"DISPATCH_VISIBILITY_TIMEOUT_S": str(visibility_s), "PYTHONUNBUFFERED": "1"}
    if stall_check_s is not None:
        env["DISPATCH_STALL_CHECK_S"] = str(stall_check_s)
    with cluster_parts(2, CONCURRENCY, extra_env=env, appendonly=True) as parts:
        log = parts.tmp / "executions.log"
        config = shell_config(log)
        runner = Runner(parts.settings)
        client = redis.Redis.from_url(parts.redis.url)
        killed: set[int] = set()
        stop = threading.Event()
        t0 = time.monotonic()
        report.samples.append(sample(parts, client, t0, 0))
        restarter = Restarter(parts, restart_every, t0, stop, killed, report.restarts, kill_every)
        restarter.start()
        sampler_stop = threading.Event()

        def sampler() -> None:
            while not sampler_stop.wait(sample_every):
                try:
                    report.samples.append(sample(parts, client, t0, report.tasks))
                except redis.RedisError:
                    pass

        sampling = threading.Thread(target=sampler, daemon=True, name="sampler")
        sampling.start()
        deadline = t0 + minutes * 60
        kinds = ["flat", "dag", "dag", "shell"]
        shell_runs: list[str] = []  # the succeeded ones: each of their agents must have logged a run
        try:
            while time.monotonic() < deadline and report.tasks < max_tasks:
                kind = rng.choice(kinds)
                doc = document(kind, rng, parts.tmp)
                began = time.monotonic()
                try:
                    final = run_one(runner, config, doc, run_timeout_s)
                    fault = check_run(final, doc, kind)
                except Exception as exc:  # noqa: BLE001 - a run that did not end is a lost run
                    final, fault = None, f"{kind}: {exc}"
                report.run_seconds_max = max(report.run_seconds_max, round(time.monotonic() - began, 1))
                report.runs += 1
                report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
                report.tasks += len(doc["tasks"])
                if kind == "shell" and not fault:
                    shell_runs.append(final.run_id)
                if fault:
                    report.lost.append(fault)
                    if not quiet:
                        print(f"LOST: {fault}", file=sys.stderr, flush=True)
                if not quiet and report.runs % 50 == 0:
                    print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {report.runs} runs, {report.tasks} tasks, "
                          f"{len(report.restarts)} restarts, {len(report.lost)} lost", file=sys.stderr, flush=True)
        finally:
            stop.set()
            sampler_stop.set()
            report.minutes = round((time.monotonic() - t0) / 60, 2)
            restarter.join(TERM_WAIT_S + 45)
            sampling.join(5)
        time.sleep(1.0)  # the last acks
        report.samples.append(sample(parts, client, t0, report.tasks))
        runs = executions(log)
        report.shell_executions = sum(len(p) for p in runs.values())
        report.reruns, report.reruns_explained = count_reruns(runs, killed)
        unlogged = [f"{run_id}/t{i}" for run_id in shell_runs for i in range(12) if (run_id, f"t{i}") not in runs]
        if unlogged:
            report.lost.append(f"{len(unlogged)} shell agent(s) have a result but never ran: {unlogged[:5]}")
    if report.ok:  # the AOF and the logs (tens of MB) only matter when something was lost
        shutil.rmtree(parts.tmp, ignore_errors=True)
    elif not quiet:
        print(f"the workers' logs and the execution log are in {parts.tmp}", file=sys.stderr)
    return report


def rss_trends(report: SoakReport, warmup_s: float) -> dict[str, dict]:
    """Per worker (incarnation): first and last sample after the warm-up, the max, and the least-squares
    slope in MB per minute over those samples."""
    series: dict[str, list[tuple[float, float]]] = {}
    for s in report.samples:
        for name, mb in s.rss.items():
            series.setdefault(name, []).append((s.t, mb))
    born = {r.started: r.t for r in report.restarts}
    trends = {}
    for name, points in series.items():
        after = [(t, mb) for t, mb in points if t >= born.get(name, 0.0) + warmup_s]
        if len(after) < 3:
            continue
        ts, ms = [t for t, _ in after], [mb for _, mb in after]
        mt, mm = statistics.fmean(ts), statistics.fmean(ms)
        var = sum((t - mt) ** 2 for t in ts)
        slope = sum((t - mt) * (m - mm) for t, m in zip(ts, ms)) / var * 60 if var else 0.0
        trends[name] = {"from_s": ts[0], "to_s": ts[-1], "first_mb": ms[0], "last_mb": ms[-1], "max_mb": max(ms),
                        "slope_mb_per_min": round(slope, 3)}
    return trends


def summary(report: SoakReport, warmup_s: float) -> dict:
    warm = next((s for s in report.samples if s.t >= warmup_s), report.samples[0])
    end = report.samples[-1]
    done_since = max(1, end.tasks_done - warm.tasks_done)
    return {
        "ok": report.ok, "minutes": report.minutes, "runs": report.runs, "tasks": report.tasks,
        "tasks_per_s": round(report.tasks_per_s, 1), "by_kind": report.by_kind,
        "restarts": len(report.restarts), "kills": sum(1 for r in report.restarts if r.signal == "KILL"),
        "restart_seconds_max": max((r.seconds for r in report.restarts), default=0),
        "run_seconds_max": report.run_seconds_max, "lost": report.lost,
        "shell_executions": report.shell_executions, "reruns": report.reruns,
        "reruns_explained": report.reruns_explained, "unexplained_reruns": report.unexplained_reruns,
        "rss": rss_trends(report, warmup_s),
        "redis": {"at_s": [report.samples[0].t, warm.t, end.t],
                  "used_memory_mb": [round(x.redis_used / 2**20, 2) for x in (report.samples[0], warm, end)],
                  "keys": [report.samples[0].redis_keys, warm.redis_keys, end.redis_keys],
                  "growth_per_task_b": round((end.redis_used - warm.redis_used) / done_since, 1)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def print_summary(s: dict, out=sys.stdout) -> None:
    print(f"soak: {'OK' if s['ok'] else 'FAILED'} after {s['minutes']} min, load average {s['load_average']}", file=out)
    print(f"  runs {s['runs']} {s['by_kind']}, tasks {s['tasks']}, {s['tasks_per_s']} tasks/s, "
          f"longest run {s['run_seconds_max']} s", file=out)
    print(f"  restarts {s['restarts']} ({s['kills']} with -9), longest restart {s['restart_seconds_max']} s", file=out)
    print(f"  lost {len(s['lost'])}; shell executions {s['shell_executions']}, re-runs {s['reruns']} "
          f"({s['reruns_explained']} on a worker killed -9, {s['unexplained_reruns']} unexplained)", file=out)
    for fault in s["lost"][:10]:
        print(f"    {fault}", file=out)
    for name, t in s["rss"].items():
        print(f"  RSS {name:<10} {t['first_mb']:6.1f} MB at {t['from_s']:6.0f} s -> {t['last_mb']:6.1f} MB at "
              f"{t['to_s']:6.0f} s (max {t['max_mb']:.1f}), trend {t['slope_mb_per_min']:+.3f} MB/min", file=out)
    r = s["redis"]
    print(f"  Redis used_memory {r['used_memory_mb'][0]} MB at start, {r['used_memory_mb'][1]} MB after warm-up, "
          f"{r['used_memory_mb'][2]} MB at the end ({r['growth_per_task_b']} B per task since warm-up); "
          f"keys {r['keys'][0]} / {r['keys'][1]} / {r['keys'][2]}", file=out)


def rows(s: dict) -> list[dict]:
    """The soak as ``bench/run_all.py`` rows."""
    steady = s["rss"].get("bench0", {})
    return [
        {"name": f"soak {s['minutes']} min, {s['restarts']} worker restarts ({s['kills']} -9): runs lost or "
                 f"unexplained re-runs", "value": len(s["lost"]) + s["unexplained_reruns"], "unit": "",
         "baseline": 0, "ratio": "-", "target": "0"},
        {"name": f"soak: {s['tasks']} tasks in {s['runs']} runs, throughput", "value": s["tasks_per_s"],
         "unit": "t/s", "baseline": "", "ratio": "", "target": "(reference)"},
        {"name": "soak: long-lived worker RSS trend after warm-up", "value": steady.get("slope_mb_per_min", "-"),
         "unit": "MB/m", "baseline": steady.get("first_mb", ""), "ratio": "", "target": "~ 0 (flat)"},
        {"name": "soak: Redis used_memory growth per task (7-day state TTL keeps every run)",
         "value": s["redis"]["growth_per_task_b"], "unit": "B", "baseline": 1024,
         "ratio": round(s["redis"]["growth_per_task_b"] / 1024, 3), "target": "<= 1.00"},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--restart-every", type=float, default=180, metavar="S")
    parser.add_argument("--warmup", type=float, default=60, metavar="S", help="RSS/Redis trends start after this")
    parser.add_argument("--sample-every", type=float, default=10, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary and every sample here")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where a soak that seems stuck stands
    if args.minutes <= 0 or args.tasks <= 0 or args.restart_every <= 0 or args.sample_every <= 0:
        parser.error("--minutes, --tasks, --restart-every and --sample-every must be positive")
    report = soak(args.minutes, args.tasks, args.restart_every, args.seed, args.sample_every)
    s = summary(report, args.warmup)
    print_summary(s)
    if args.json:
        args.json.write_text(json.dumps({**s, "restarts_detail": [asdict(r) for r in report.restarts],
                                         "samples": [asdict(x) for x in report.samples]}, indent=1))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
