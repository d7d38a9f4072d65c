"""P8 embedded mode: no-op tasks per second, the cost of a dependent hop, against their targets.

    .venv/bin/python bench/bench_embedded.py [--tasks 1000] [--chain 200]

In one process, as the CLI runs it with no broker (the in-process worker,
fakeredis): phases 2-4 over N independent no-op tasks (tasks/s, target
>= 1000), and over a chain of M dependent no-ops (ms per hop, target <= 2).
Phase 4's own duration is measured (its ``PhaseResult``), so the process's
start-up and phases 2-3 do not count; a thread pool running the same no-ops is
printed beside it as the floor.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def run(tasks: int = 1000, chain: int = 200) -> list[dict]:
    runner = embedded_runner()
    phase_4_ms(runner, [noop(i, []) for i in range(20)])  # warm: imports, the worker's first start
    wide = phase_4_ms(runner, [noop(i, []) for i in range(tasks)])
    deep = phase_4_ms(runner, [noop(i, [f"t{i - 1}"] if i else []) for i in range(chain)])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: time.sleep(0), range(tasks)))
    floor_ms = (time.perf_counter() - t0) * 1000
    rate = tasks / (wide / 1000)
    return [
        {"name": f"P8 embedded: {tasks} independent no-op tasks, phase 4 (tasks/s vs the 1000/s target)",
         "value": round(rate), "unit": "/s", "baseline": 1000, "ratio": round(rate / 1000, 2),
         "target": ">= 1.00"},
        {"name": f"P8 embedded: a chain of {chain} dependent no-ops, ms per hop vs the 2 ms target",
         "value": round(deep / chain, 2), "unit": "ms", "baseline": 2.0, "ratio": round(deep / chain / 2.0, 2),
         "target": "<= 1.00"},
        {"name": f"P8 a thread pool running the same {tasks} no-ops (the floor)",
         "value": round(floor_ms, 1), "unit": "ms", "baseline": round(wide, 1),
         "ratio": round(floor_ms / wide, 4), "target": "(reference)"},
    ]


if __name__ == "__main__":
    from bench.bench_pipeline import print_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=200)
    a = parser.parse_args()
    print_rows(run(a.tasks, a.chain))
