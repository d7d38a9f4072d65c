"""P7 scale: N no-op tasks through phases 2-4 by the real CLI, on real workers and a private Redis.

    .venv/bin/python bench/bench_scale.py [--tasks 1000,10000] [--repeat 3] [--workers 2] [--concurrency 4]

For each N: the CLI's wall time against a bare Celery group of N no-ops on the
same workers, the CLI's peak RSS, each worker's RSS
before and after the run, and what the closed run keeps in Redis: the growth of
``used_memory`` per task and the ``MEMORY USAGE`` of every key left naming the
run (its compacted state, the phase ledger).  ``--results-file`` is on, so the
streamed path is the one measured.

The CLI's peak RSS is its own ``VmHWM``, which it writes as it exits (``PEAK``
runs ``cli.py`` under a few lines that do it).  ``wait4``'s ``ru_maxrss`` is
printed beside it (``maxrss_mb``) but is not the CLI's: Linux carries the
address space the child was forked from into it at ``exec``, so it is never
less than this benchmark process's own RSS when it spawned the CLI (over
100 MB once a bare group of 10k results has been collected here).

Beside the wall time, the CPU of each side (the workers, Redis, and the client:
the CLI, or this process for the bare group): on this 2-core machine both sides
are CPU-bound and the bare group's wall time alone moves by a third between runs.
``--repeat R`` runs R interleaved pairs per N and reports medians.

``--no-bare`` skips the bare group (the CLI's RSS and Redis only, no time
ratio): on a loaded machine a 100k-task bare group outlasts its 600 s wait.

    .venv/bin/python bench/bench_scale.py --collect 100000 [--whole]

measures phase 4's close alone, in a fresh process: N no-op results in a real
Redis hash, then the close and the save, streamed (the collect step's way) or,
with ``--whole``, with every result loaded as an object first (the way before
issue 17); it prints the peak and the RSS left over the process's start.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import run_bare_group  # noqa: E402
from bench.cluster import Cluster, cluster_parts  # noqa: E402
from dispatch.store.deployment import RETIRE_LINGER_S  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads) and of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def server_cpu(parts: Cluster) -> float:
    """CPU of what serves both sides alike: the workers and Redis."""
    return sum(cpu_s(proc.pid) for proc in parts.pool.procs.values()) + cpu_s(parts.redis.proc.pid)


def workers_rss(parts: Cluster) -> list[float]:
    """RSS of each worker (the pool's main process; threads pool: the only one)."""
    return [rss_mb(proc.pid) for proc in parts.pool.procs.values()]


def document(n: int) -> dict:
    return {"user_prompt": "no-op scale benchmark", "config": {"max_workers": n, "timeout_seconds": 60},
            "tasks": [{"task_id": f"t{i}", "agent": "sleep", "description": f"no-op {i}",
                       "input_data": {"duration_ms": 0}} for i in range(n)]}


# ``python -c PEAK cli.py ARGS``: cli.py as ``python cli.py ARGS`` runs it, then its own peak RSS (``VmHWM``,
# of this process's address space only) written to $BENCH_PEAK_FILE, however it exits
PEAK = """import os, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as fh:
        fh.write(hwm)
"""


def run_cli(parts: Cluster, n: int, tmp: Path) -> dict:
    """The CLI as a user runs it; seconds, peak RSS (its own, and ``wait4``'s), the run id, the results
    file's line count."""
    source, out, lines = tmp / f"in-{n}.json", tmp / f"out-{n}.json", tmp / f"results-{n}.jsonl"
    peak_file = tmp / f"peak-{n}.txt"
    source.write_text(json.dumps(document(n)))
    spawned_from = rss_mb(os.getpid())
    t0 = time.perf_counter()
    with open(out, "w") as stdout, open(tmp / f"err-{n}.txt", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", PEAK, str(ROOT / "cli.py"), "--skip-phases", "0,1", "-q",
                                 "-f", str(source), "--results-file", str(lines)], stdout=stdout, stderr=stderr,
                                env={**parts.env, "BENCH_PEAK_FILE": str(peak_file)}, cwd=tmp)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    client_cpu = usage.ru_utime + usage.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the CLI failed: {(tmp / f'err-{n}.txt').read_text()[-2000:]}")
    with open(out) as fh:
        run_id = json.load(fh)["run_id"]
    with open(lines) as fh:
        count = sum(1 for _ in fh)
    return {"seconds": seconds, "client_cpu_s": client_cpu, "peak_mb": int(peak_file.read_text()) / 1024,
            "run_id": run_id, "lines": count,
            "maxrss_mb": usage.ru_maxrss / 1024, "bench_rss_at_spawn_mb": spawned_from}


def redis_kept(parts: Cluster, run_id: str) -> tuple[int, dict[str, int], dict[str, int]]:
    import redis

    client = redis.Redis.from_url(parts.redis.url)
    keys = {k.decode(): client.memory_usage(k) or 0 for k in client.scan_iter(f"*{run_id}*")}
    # what stays past the first minutes: keys without a TTL, or one longer than the ledger's linger
    lasting = {k: size for k, size in keys.items() if not 0 < client.ttl(k) <= RETIRE_LINGER_S}
    return int(client.info("memory")["used_memory"]), keys, lasting


def used_memory(parts: Cluster) -> int:
    import redis

    return int(redis.Redis.from_url(parts.redis.url).info("memory")["used_memory"])


def bare_with_cpu(parts: Cluster, n: int) -> tuple[float, float]:
    """The bare group's seconds and CPU seconds (workers, Redis, and this process, its client)."""
    own, served = time.process_time(), server_cpu(parts)
    seconds = run_bare_group(parts.settings, n)
    time.sleep(1.0)  # the last acks
    return seconds, time.process_time() - own + server_cpu(parts) - served


def measure(parts: Cluster, n: int, bare_group: bool = True) -> dict:
    tmp = parts.tmp / f"scale-{n}"
    tmp.mkdir(exist_ok=True)
    bare, bare_cpu = bare_with_cpu(parts, n) if bare_group else (None, None)
    time.sleep(0.5)
    before_rss, before_mem, served = workers_rss(parts), used_memory(parts), server_cpu(parts)
    ours = run_cli(parts, n, tmp)
    time.sleep(1.0)  # the last acks, as for the bare group
    ours["cpu_s"] = ours["client_cpu_s"] + server_cpu(parts) - served
    time.sleep(2.0)  # the chord bookkeeping, then the workers' idle release (runtime/memory.py)
    after_rss = workers_rss(parts)
    after_mem, kept, lasting = redis_kept(parts, ours["run_id"])
    return {"n": n, "bare_s": bare, "bare_cpu_s": bare_cpu, **ours, "rss_before": before_rss, "rss_after": after_rss,
            "redis_growth_per_task": (after_mem - before_mem) / n, "kept_keys": kept,
            "kept_per_task": sum(kept.values()) / n, "lasting_per_task": sum(lasting.values()) / n}


def rows_of(ms: list[dict], shape: str) -> list[dict]:
    """One row per figure; with repeats (interleaved pairs), medians: the ratios are medians of each
    pair's own ratio, the sizes the worst of the repeats."""
    n, bare_run = ms[0]["n"], ms[0]["bare_s"] is not None
    growth = max(a - b for m in ms for a, b in zip(m["rss_after"], m["rss_before"]))
    seconds = statistics.median(m["seconds"] for m in ms)
    cpu = statistics.median(m["cpu_s"] for m in ms)
    bare = statistics.median(m["bare_s"] for m in ms) if bare_run else None
    bare_cpu = statistics.median(m["bare_cpu_s"] for m in ms) if bare else None
    each = f", median of {len(ms)}" if len(ms) > 1 else ""
    peak, lasting, kept = (max(m[k] for m in ms) for k in ("peak_mb", "lasting_per_task", "kept_per_task"))
    return [
        {"name": f"P7 {n} no-op tasks by the CLI, phases 2-4, --results-file ({shape}) vs bare group{each}",
         "value": round(seconds, 2), "unit": "s", "baseline": round(bare, 2) if bare else "not run",
         "ratio": round(statistics.median(m["seconds"] / m["bare_s"] for m in ms), 3) if bare else "-",
         "target": "<= 1.10"},
        {"name": f"P7 {n} tasks: CPU of the whole run (workers, Redis, client) vs the bare group's{each}",
         "value": round(cpu, 1), "unit": "s", "baseline": round(bare_cpu, 1) if bare else "not run",
         "ratio": round(statistics.median(m["cpu_s"] / m["bare_cpu_s"] for m in ms), 3) if bare else "-",
         "target": "(reference: 2 cores)"},
        {"name": f"P7 {n} tasks: CLI peak RSS vs the 150 MB target", "value": round(peak), "unit": "MB",
         "baseline": 150, "ratio": round(peak / 150, 2), "target": "<= 1.00"},
        {"name": f"P7 {n} tasks: worst worker RSS growth over the run vs the 30 MB target",
         "value": round(growth, 1), "unit": "MB", "baseline": 30, "ratio": round(growth / 30, 2),
         "target": "<= 1.00"},
        {"name": f"P7 {n} tasks: Redis kept per task once closed, past the 10-min linger, vs 1 KB",
         "value": round(lasting), "unit": "B", "baseline": 1024, "ratio": round(lasting / 1024, 3),
         "target": "<= 1.00"},
        {"name": f"P7 {n} tasks: Redis kept per task right after the close (agent ledger lingering) vs 1 KB",
         "value": round(kept), "unit": "B", "baseline": 1024, "ratio": round(kept / 1024, 3),
         "target": "(reference)"},
    ]


def run(tasks: tuple[int, ...] = (1000,), workers: int = 2, concurrency: int = 4, verbose: bool = False,
        bare_group: bool = True, repeat: int = 1) -> list[dict]:
    rows = []
    with cluster_parts(workers, concurrency) as parts:
        run_bare_group(parts.settings, 20)  # warm imports on the workers
        run_cli(parts, 20, parts.tmp)
        for n in tasks:
            ms = []
            for _ in range(repeat):  # each a bare group, then the CLI: interleaved, drift hits both alike
                ms.append(measure(parts, n, bare_group))
                if verbose:
                    print(json.dumps(ms[-1], indent=1), file=sys.stderr)
            rows += rows_of(ms, f"{workers}x{concurrency} threads")
    return rows


def collect_peak(n: int, whole: bool) -> str:
    """The close of an N-task phase 4 on a private Redis: peak and left-over RSS over what came before."""
    import gc
    import tempfile

    import redis

    from dispatch.models import PhaseState, TaskPlan, TaskResult, TaskSpec, Usage
    from dispatch.pipeline.execution import close_execution
    from dispatch.store.scheduler import DagScheduler
    from dispatch.store.state import RedisStateStore
    from dispatch.tasks.agents import scanned
    from dispatch.testing import RedisServer

    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-collect-")))
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        tasks = [TaskSpec(task_id=f"t{i}", agent="sleep", description=f"no-op {i}") for i in range(n)]
        state = PhaseState(run_id="r", tasks_data=tasks, selected_phases=[2, 3, 4],
                           plan=TaskPlan(order=[t.task_id for t in tasks]))
        scheduler = DagScheduler(client, "bench", "r")
        pipe = client.pipeline()
        for i in range(n):  # a no-op's result as a worker records it (its prompt included)
            pipe.hset(scheduler.key("results"), f"t{i}", TaskResult(
                task_id=f"t{i}", agent="sleep", success=True, output={"slept_ms": 0}, worker="w1@h",
                duration_ms=0.2, started_at="2026-12-01T12:00:00.000Z", completed_at="2026-12-01T12:00:00.001Z",
                prompt=f"Task: no-op {i}\n" + "x" * 200, usage=Usage()).model_dump_json())
        pipe.execute()
        del tasks
        gc.collect()
        base = rss_mb(os.getpid())
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the close's own peak
        finished = scheduler.results() if whole else scanned(scheduler)
        close_execution(state, finished, time.time())
        RedisStateStore(client, "bench").save(state)
        del finished
        state.task_results = []
        gc.collect()
        peak = rss_mb(os.getpid(), "VmHWM:") - base
        return (f"close of {n} tasks ({'whole' if whole else 'streamed'}): peak +{peak:.0f} MB, "
                f"left +{rss_mb(os.getpid()) - base:.0f} MB")
    finally:
        server.stop()


if __name__ == "__main__":
    from bench.bench_pipeline import print_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="1000,10000", help="comma-separated task counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--collect", type=int, help="measure phase 4's close alone at this many tasks")
    parser.add_argument("--whole", action="store_true", help="with --collect: every result loaded first")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved pairs per N; medians reported")
    parser.add_argument("--no-bare", action="store_true",
                        help="the CLI's side only (its RSS, Redis): no bare group, so no time ratio")
    a = parser.parse_args()
    if a.collect:
        print(collect_peak(a.collect, a.whole))
        sys.exit(0)
    print_rows(run(tuple(int(x) for x in a.tasks.split(",")), a.workers, a.concurrency, verbose=True,
                   bare_group=not a.no_bare, repeat=max(1, a.repeat)))
