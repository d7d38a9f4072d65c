"""P4: CLI start-up, against ``celery --help`` (the floor of any Celery CLI)."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], stdin: str = "", repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=ROOT, check=False)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run(repeat: int = 5) -> list[dict]:
    # interleaved, so a change of the machine's load hits both sides alike
    celery, help_, run_ = [], [], []
    tiny = '{"tasks": [{"task_id": "a", "agent": "echo", "description": "x"}]}'
    for _ in range(repeat):
        celery.append(timed([sys.executable, "-m", "celery", "--help"], repeat=1))
        help_.append(timed([sys.executable, "cli.py", "--help"], repeat=1))
        run_.append(timed([sys.executable, "cli.py", "-q"], stdin=tiny, repeat=1))
    celery, help_, run_ = (statistics.median(x) for x in (celery, help_, run_))
    import os

    print(f"P4 medians of {repeat}, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return [
        {"name": "P4 `cli.py --help` vs `celery --help`", "value": round(help_ * 1000), "unit": "ms",
         "baseline": round(celery * 1000), "ratio": round(help_ / celery, 2), "target": "(reference)"},
        {"name": "P4 one echo task end to end, embedded (phases 2-4) vs `celery --help`",
         "value": round(run_ * 1000), "unit": "ms", "baseline": round(celery * 1000),
         "ratio": round(run_ / celery, 2), "target": "<= 0.50"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
