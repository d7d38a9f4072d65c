"""Every benchmark side by side in one run: a table of absolute figures and ratios.

    .venv/bin/python bench/run_all.py [--quick] [--slow [--soak-minutes 30]]

P1 pipeline overhead vs a bare Celery group, P2 DAG makespan vs its lower bound
(real Redis, real workers), P3 context index and query vs a naive scan, P4 CLI
start vs ``celery --help``, P5 state save+load for 10k tasks, P6 phases 0 and 1 side by side vs in
sequence (a slow retriever and a slow validator), P7 scale (N no-op tasks by the CLI: time vs a bare group,
CLI peak RSS, worker RSS growth, Redis kept per closed task), P8 embedded throughput, hop cost and start-up
(one echo task, bytecode cached, and the floor of importing Celery), P9 what a worker spends sending one
agent message (one by one, batched, the short way).  ``--slow``
adds the soak (``bench/soak.py``, 30 min: runs back to back while a worker is restarted).  Run it on a
quiet machine: the ratios compare runs made minutes apart on the same cores.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import (bench_cli, bench_context, bench_embedded, bench_phase_dag, bench_pipeline,  # noqa: E402
                   bench_scale, bench_sends, bench_state, soak)


def machine_line() -> str:
    import celery
    import kombu
    import redis

    cpu = platform.processor() or platform.machine()
    return (f"machine: {platform.system()} {platform.release()} {cpu}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, celery {celery.__version__}, kombu {kombu.__version__}, "
            f"redis-py {redis.__version__}, load average {os.getloadavg()[0]:.2f}")


def table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<86} {'value':>10}      {'baseline':>10}  {'ratio':>6}  target",
             "-" * 132]
    for r in rows:
        lines.append(f"{r['name']:<86} {r['value']:>10} {r['unit']:<4} {r['baseline']:>10}  {r['ratio']:>6}  "
                     f"{r.get('target', '')}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller P1 (a smoke run)")
    parser.add_argument("--slow", action="store_true",
                        help="also the soak (bench/soak.py: --soak-minutes long, workers restarted); not in CI")
    parser.add_argument("--soak-minutes", type=float, default=30, metavar="MIN")
    args = parser.parse_args()
    if args.soak_minutes <= 0:
        parser.error("--soak-minutes must be positive")
    repeat = 1 if args.quick else 3
    rows: list[dict] = []
    t0 = time.time()
    suites = [
        ("P1/P2", lambda: bench_pipeline.run(tasks=200 if args.quick else 1000, repeat=repeat)),
        ("P3", lambda: bench_context.run(bench_context.DEFAULT_CORPUS)),
        ("P4", lambda: bench_cli.run(repeat=3 if args.quick else 5)),
        ("P5", lambda: bench_state.run(repeat=repeat)),
        ("P6", lambda: bench_phase_dag.run(delay_s=0.5 if args.quick else 1.0, repeat=repeat)),
        ("P7", lambda: bench_scale.run(tasks=(300,) if args.quick else (1000, 10000))),
        ("P8", lambda: bench_embedded.run(tasks=300 if args.quick else 1000, chain=50 if args.quick else 200)
         + bench_embedded.start_ups(repeat=3 if args.quick else 7)),
        ("P9", lambda: bench_sends.run(sends=300 if args.quick else 1000, rounds=3 if args.quick else 7)),
    ]
    soaked: list[bool] = []

    def soak_rows() -> list[dict]:
        summary = soak.summary(soak.soak(minutes=args.soak_minutes), warmup_s=60)
        soak.print_summary(summary, out=sys.stderr)
        soaked.append(summary["ok"])
        return soak.rows(summary)

    if args.slow:
        suites.append(("soak", soak_rows))
    for name, suite in suites:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += suite()
    print(machine_line())
    print(table(rows))
    print(f"(total {time.time() - t0:.0f} s)")
    return 0 if all(soaked) else 1  # the soak lost something (its lines on stderr say what)


if __name__ == "__main__":
    sys.exit(main())
