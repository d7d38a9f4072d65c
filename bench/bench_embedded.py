"""P8 embedded mode: no-op tasks per second, the cost of a dependent hop, against their targets.

    .venv/bin/python bench/bench_embedded.py [--tasks 1000] [--chain 200] [--repeat 3] [--starts 7]

In one process, as the CLI runs it with no broker (the in-process worker, the
private ``redis-server``, or fakeredis with ``DISPATCH_EMBEDDED_REDIS=fakeredis``): phases 2-4 over N independent no-op tasks (tasks/s, target
>= 1000), and over a chain of M dependent no-ops (ms per hop, target <= 2).
Phase 4's own duration is measured (its ``PhaseResult``), so the process's
start-up and phases 2-3 do not count; a thread pool running the same no-ops is
printed beside it as the floor.  Each figure is the median of ``--repeat`` runs
(3), with the process's CPU time per task beside it (what the load average
does not change much) and the load average at the time.

Phase 4 runs on the in-process executor (``runtime/embedded_executor.py``);
``DISPATCH_EMBEDDED_EXECUTOR=celery`` measures the chord path it replaced.

Start-up (``--starts`` processes each, interleaved, medians): one echo task end
to end (``cli.py -q``) against ``celery --help`` (target <= 0.5), and beside it
the floor of any embedded path that uses Celery: a process that only imports
the Celery modules it needs (the Redis result backend, canvas, the in-process
worker).  Every process runs with its bytecode cached (a private
``PYTHONPYCACHEPREFIX``, a warm-up run first), as an installed package runs:
with ``PYTHONDONTWRITEBYTECODE`` set, each start would compile dispatch's
sources again (about 100 ms) and measure that instead.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ONE_ECHO = '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"}]}'
CELERY_FLOOR = "import celery.backends.redis, celery.canvas, celery.contrib.testing.worker"


def embedded_runner():
    os.environ.pop("DISPATCH_BROKER_URL", None)
    os.environ.setdefault("DISPATCH_STATE_DIR", tempfile.mkdtemp(prefix="dispatch-bench-embedded-"))
    from dispatch.config import Settings
    from dispatch.runtime.client import Runner
    from dispatch.runtime.embedded import silence_worker_logs

    silence_worker_logs()
    return Runner(Settings.from_env())


def phase_4_ms(runner, tasks: list[dict]) -> float:
    from dispatch.config import DispatchConfig
    from dispatch.models import ExecutionPhase, PhaseConfig
    from dispatch.pipeline.inputs import validate_input
    from dispatch.pipeline.prepare import prepare_state

    document = {"user_prompt": "embedded benchmark", "config": {"max_workers": 8, "timeout_seconds": 60},
                "tasks": tasks}
    state = prepare_state(validate_input(document), PhaseConfig(skip_phases=[0, 1]), DispatchConfig(), None).state
    final = runner.run(state)
    assert final.status == "succeeded", final.status
    return final.result_for(ExecutionPhase.PARALLEL_EXECUTION).duration_ms


def noop(i: int, dependencies: list[str]) -> dict:
    return {"task_id": f"t{i}", "agent": "sleep", "description": f"no-op {i}", "input_data": {"duration_ms": 0},
            "dependencies": dependencies}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(runner, tasks: list[dict], repeat: int) -> tuple[float, float]:
    """Median phase-4 ms and median CPU ms of the whole run (this process: phases 2-4 and the worker)."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = cpu_s()
        walls.append(phase_4_ms(runner, tasks))
        cpus.append((cpu_s() - c0) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def run(tasks: int = 1000, chain: int = 200, repeat: int = 3) -> list[dict]:
    runner = embedded_runner()
    phase_4_ms(runner, [noop(i, []) for i in range(20)])  # warm: imports, the worker's first start
    wide, wide_cpu = measured(runner, [noop(i, []) for i in range(tasks)], repeat)
    deep, deep_cpu = measured(runner, [noop(i, [f"t{i - 1}"] if i else []) for i in range(chain)], repeat)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: time.sleep(0), range(tasks)))
    floor_ms = (time.perf_counter() - t0) * 1000
    rate = tasks / (wide / 1000)
    load = f"load {os.getloadavg()[0]:.1f}"
    return [
        {"name": f"P8 embedded: {tasks} independent no-op tasks, phase 4 (tasks/s vs the 1000/s target; {load})",
         "value": round(rate), "unit": "/s", "baseline": 1000, "ratio": round(rate / 1000, 2),
         "target": ">= 1.00"},
        {"name": f"P8 embedded: a chain of {chain} dependent no-ops, ms per hop vs the 2 ms target ({load})",
         "value": round(deep / chain, 2), "unit": "ms", "baseline": 2.0, "ratio": round(deep / chain / 2.0, 2),
         "target": "<= 1.00"},
        {"name": f"P8 embedded: CPU per task, the {tasks}-task run (phases 2-4, this process)",
         "value": round(wide_cpu / tasks, 3), "unit": "ms", "baseline": 1.0,
         "ratio": round(wide_cpu / tasks, 2), "target": "(reference: 1 ms = 1000/s on one core)"},
        {"name": f"P8 embedded: CPU per hop, the {chain}-task chain",
         "value": round(deep_cpu / chain, 3), "unit": "ms", "baseline": 2.0,
         "ratio": round(deep_cpu / chain / 2.0, 2), "target": "(reference)"},
        {"name": f"P8 a thread pool running the same {tasks} no-ops (the floor)",
         "value": round(floor_ms, 1), "unit": "ms", "baseline": round(wide, 1),
         "ratio": round(floor_ms / wide, 4), "target": "(reference)"},
    ]


def start_ups(repeat: int = 7) -> list[dict]:
    """One echo end to end, and the Celery import floor, against ``celery --help`` (interleaved medians)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("DISPATCH_")}
    env.update(PYTHONPYCACHEPREFIX=tempfile.mkdtemp(prefix="dispatch-bench-pycache-"),
               DISPATCH_STATE_DIR=tempfile.mkdtemp(prefix="dispatch-bench-embedded-"))
    commands = {"celery": ([sys.executable, "-m", "celery", "--help"], ""),
                "echo": ([sys.executable, "cli.py", "-q"], ONE_ECHO),
                "floor": ([sys.executable, "-c", CELERY_FLOOR], "")}
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeat + 1):  # the first round writes the bytecode and is not counted
        for name, (argv, stdin) in commands.items():
            t0 = time.perf_counter()
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr[-1000:]}")
            if round_:
                samples[name].append(time.perf_counter() - t0)
    celery, echo, floor = (statistics.median(samples[name]) * 1000 for name in ("celery", "echo", "floor"))
    load = f"load {os.getloadavg()[0]:.1f}"
    return [
        {"name": f"P8 one echo task end to end, embedded (`cli.py -q`) vs `celery --help` ({load})",
         "value": round(echo), "unit": "ms", "baseline": round(celery), "ratio": round(echo / celery, 2),
         "target": "<= 0.50"},
        {"name": "P8 floor: importing only the Celery modules an embedded run needs, vs `celery --help`",
         "value": round(floor), "unit": "ms", "baseline": round(celery), "ratio": round(floor / celery, 2),
         "target": "(reference)"},
    ]


if __name__ == "__main__":
    from bench.bench_pipeline import print_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--starts", type=int, default=7, help="processes per start-up figure (0: none)")
    a = parser.parse_args()
    if min(a.tasks, a.chain, a.repeat) < 1 or a.starts < 0:
        parser.error("--tasks, --chain and --repeat must be positive, --starts at least 0")
    print_rows(run(a.tasks, a.chain, a.repeat) + (start_ups(a.starts) if a.starts else []))
