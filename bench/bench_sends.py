"""P9: what sending one agent message costs the worker that sends it (a completion's dependents).

    .venv/bin/python bench/bench_sends.py [--sends 1000] [--rounds 7]

CPU seconds of this process per message (its ``task-sent`` event included) against a private
``redis-server``, three ways side by side, interleaved round by round so the machine's drift hits
all three alike (medians of the rounds after the first):

- one by one: ``Signature.delay`` per message, Celery's path (the baseline: what every completion did);
- batched: the same calls inside ``tasks.sending.sent_together`` with the short path turned off (one
  MULTI/EXEC per 1,000 commands instead of two round trips a message);
- short: inside ``sent_together`` as phase 4 sends (``ShortSender``: Celery's message builder, no
  per-message routing, declaration or ensure).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from dispatch.config import Settings  # noqa: E402
from dispatch.runtime.app import create_app  # noqa: E402
from dispatch.tasks import sending  # noqa: E402
from dispatch.tasks.agents import agent_signature  # noqa: E402
from dispatch.testing import RedisServer  # noqa: E402


def run(sends: int = 1000, rounds: int = 7) -> list[dict]:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-sends-")))
    server.start()
    try:
        app = create_app(Settings.from_env({"DISPATCH_BROKER_URL": server.url, "DISPATCH_KEY_PREFIX": "bench"}))
        app.finalize()
        client = redis.Redis.from_url(server.url)
        chord = dict(app.signature("dispatch.collect", args=("run",)).set(task_id="run-phase4"))

        def signatures(tag: str) -> list:
            out = [agent_signature(app, "run", f"t{i}", 60).set(task_id=f"run-{tag}-{i}", group_id="g",
                                                                 group_index=0, chord=chord, root_id="run-root")
                   for i in range(sends)]
            for signature in out:
                signature.freeze()
            return out

        def one_by_one(sigs: list) -> None:
            for signature in sigs:
                signature.delay()

        def batched(sigs: list) -> None:
            short = sending.short_sender
            sending.short_sender = lambda *args: None  # type: ignore[assignment]
            try:
                with sending.sent_together(app):
                    one_by_one(sigs)
            finally:
                sending.short_sender = short  # type: ignore[assignment]

        def short(sigs: list) -> None:
            with sending.sent_together(app):
                one_by_one(sigs)

        ways = {"one by one": one_by_one, "batched": batched, "short": short}
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        for round_ in range(rounds):
            for name, way in ways.items():
                sigs = signatures(f"{round_}-{name}")
                t0 = time.process_time()
                way(sigs)
                cpu[name].append((time.process_time() - t0) / sends * 1e6)
            client.flushall()  # a private server: the queue and the events' bookkeeping, not to grow
        median = {name: statistics.median(values[1:] or values) for name, values in cpu.items()}
    finally:
        server.stop()
    base = median["one by one"]
    return [{"name": f"P9 sending an agent message {name} (CPU per message, {sends} a round, median of "
                     f"{max(1, rounds - 1)})", "value": round(value), "unit": "us", "baseline": round(base),
             "ratio": round(value / base, 3), "target": "(reference)" if name == "one by one" else "< 1"}
            for name, value in median.items()]


if __name__ == "__main__":
    from bench.bench_pipeline import print_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    a = parser.parse_args()
    if a.sends <= 0 or a.rounds <= 0:
        parser.error("--sends and --rounds must be positive")
    print_rows(run(a.sends, a.rounds))
