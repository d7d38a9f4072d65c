"""A bounded chaos run on real processes: a random DAG of logging shell agents on a few real workers,
while a driver kills workers with -9, restarts Redis (AOF on), pauses a worker for less than the
visibility timeout and delivers phase 4 a second time.  At the end every task must have a result,
and an agent may have run twice only where the worker running it was killed.

    .venv/bin/python bench/chaos.py [--tasks 300] [--workers 3] [--kills 3] [--seed 1]

``tests/test_chaos.py`` runs a short form of it in CI; this long form is for a soak by hand.  Every
loop is bounded in count and time, and every server it talks to is its own, on loopback.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from dispatch.testing import PYTHON, RedisServer, WorkerPool  # noqa: E402


@dataclass
class ChaosReport:
    tasks: int
    exit_code: int
    results: int = 0
    succeeded: int = 0
    executions: int = 0
    reruns: dict[str, int] = field(default_factory=dict)  # task -> extra runs
    reruns_explained: int = 0  # extra runs whose earlier run was on a worker that was killed
    faults: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)  # the stall watchdog's resends of lost messages
    chords_closed: int = 0  # chords the watchdog closed (a part lost: its collect step sent instead)
    seconds: float = 0.0
    stderr_tail: str = ""

    @property
    def unexplained_reruns(self) -> int:
        return sum(self.reruns.values()) - self.reruns_explained


def random_dag(n: int, rng: random.Random, sleep_s: tuple[float, float] = (0.05, 0.25)) -> list[dict]:
    tasks = []
    for i in range(n):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        tasks.append({"task_id": f"t{i}", "agent": "logged", "description": f"step {i}", "dependencies": deps,
                      "input_data": {"s": f"{rng.uniform(*sleep_s):.3f}"}})
    return tasks


def executions(log: Path) -> list[tuple[str, int]]:
    """(task id, pid of the worker that ran it) per execution, in order."""
    found = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        parts = line.split()
        if len(parts) == 2:
            found.append((parts[0], int(parts[1])))
    return found


def run_chaos(tmp: Path, n_tasks: int = 300, workers: int = 3, kills: int = 3, seed: int = 1,
              visibility_s: int = 6, timeout_s: float = 240, stall_check_s: float = 2,
              sleep_s: tuple[float, float] = (0.05, 0.25)) -> ChaosReport:
    rng = random.Random(seed)
    (tmp / "redis").mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)
    server = RedisServer(tmp / "redis", appendonly=True)
    server.start()
    log = tmp / "executions.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(DISPATCH_BROKER_URL=server.url, DISPATCH_KEY_PREFIX="chaos", DISPATCH_STATE_DIR=str(tmp / "state"),
               DISPATCH_VISIBILITY_TIMEOUT_S=str(visibility_s), DISPATCH_WORKER_LOG_LEVEL="WARNING",
               DISPATCH_STALL_CHECK_S=str(stall_check_s),
               PYTHONUNBUFFERED="1")
    # $PPID: the worker process that ran the agent (threads pool), to tell a killed worker's re-runs apart
    script = f'sleep {{input.s}}; echo "$DISPATCH_TASK_ID $PPID" >> {log}; echo ok'
    config = tmp / "agents.json"
    config.write_text(json.dumps({"agents": {"logged": {"kind": "shell", "command": ["sh", "-c", script]}}}))
    document = tmp / "tasks.json"
    document.write_text(json.dumps({"tasks": random_dag(n_tasks, rng, sleep_s),
                                    "config": {"max_workers": workers * 4, "timeout_seconds": 60}}))
    pool = WorkerPool(env, tmp / "logs")
    report = ChaosReport(tasks=n_tasks, exit_code=-1)
    killed: set[int] = set()
    t0 = time.monotonic()
    try:
        names = [f"w{i}" for i in range(workers)]
        for name in names:
            pool.start(name, concurrency=4)
        cli = subprocess.Popen([PYTHON, str(ROOT / "cli.py"), "--config", str(config), "-f", str(document), "-q"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp)  # not the checkout: "." is no git work tree
        driver = threading.Thread(target=drive, args=(server, pool, names, env, log, n_tasks, kills, rng, killed,
                                                      report.faults, cli), daemon=True)
        driver.start()
        try:
            out, err = cli.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            report.faults.append("the CLI did not finish in time: " + diagnose(server.url))
            cli.kill()
            out, err = cli.communicate()
        driver.join(30)
        report.exit_code = cli.returncode
        report.stderr_tail = err[-3000:]
        try:
            results = json.loads(out)["results"]
        except (ValueError, KeyError):
            results = []
        report.results = len({r["task_id"] for r in results})
        report.succeeded = sum(1 for r in results if r["success"])
        runs = executions(log)
        report.executions = len(runs)
        seen: dict[str, list[int]] = {}
        for task_id, pid in runs:
            seen.setdefault(task_id, []).append(pid)
        for task_id, pids in seen.items():
            if len(pids) > 1:
                report.reruns[task_id] = len(pids) - 1
                # the log line is written when the agent finished; a re-run is explained when an earlier
                # execution's worker was killed (it died before recording or acking the task)
                report.reruns_explained += min(len(pids) - 1, sum(1 for pid in pids[:-1] if pid in killed))
    finally:
        pool.stop_all()
        server.stop()
    report.resent, report.chords_closed = by_watchdog(tmp / "logs")
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def by_watchdog(logs: Path) -> tuple[list[str], int]:
    """What the workers' stall watchdog did (``dispatch.runtime.watchdog``): the tasks whose lost message it
    sent again, and how many chords it closed."""
    found, closed = [], 0
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "lost phase-4 message(s) again: " in line:
                found += [t.strip() for t in line.split("again: ", 1)[1].split(",")]
            closed += "sent its collect step" in line
    return found, closed


def diagnose(url: str) -> str:
    """Where a run that did not finish stands: the scheduler's counters, queues and unacked messages."""
    client = redis.Redis.from_url(url)  # bytes: a compacted state is zlib, not text
    parts = []
    for raw_key in sorted(client.keys("*")):
        key, kind = raw_key.decode(errors="replace"), client.type(raw_key).decode()
        size = {"hash": client.hlen, "list": client.llen, "zset": client.zcard, "set": client.scard}.get(kind)
        value = size(raw_key) if size else (client.get(raw_key) or b"")[:60].decode(errors="replace")
        if ":dag:" in key and kind == "zset":
            value = [m.decode(errors="replace") for m in client.zrange(raw_key, 0, -1)]
        if key.endswith((":inflight", ":outbox", ":claims")) or key.endswith("unacked"):
            value = client.get(raw_key) if kind == "string" else value
        parts.append(f"{key}={value}")
    return "; ".join(parts)


def drive(server: RedisServer, pool: WorkerPool, names: list[str], env: dict, log: Path, n_tasks: int,
          kills: int, rng: random.Random, killed: set[int], faults: list[str], cli: subprocess.Popen) -> None:
    """Inject the faults at points of the run's progress (share of executions logged), each once."""
    plan = [(0.10, "pause")] + [(0.2 + 0.5 * i / max(1, kills), "kill") for i in range(kills)] + \
           [(0.35, "redis"), (0.15, "redeliver")]  # early: a short run may be over by half-way
    plan.sort()
    restarted = 0
    deadline = time.monotonic() + 180
    for share, fault in plan:
        while len(executions(log)) < share * n_tasks:
            if cli.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.05)
        if fault == "pause":
            name = rng.choice(names)
            pid = pool.procs[name].pid
            os.killpg(pid, signal.SIGSTOP)
            time.sleep(1.5)
            os.killpg(pid, signal.SIGCONT)
            faults.append(f"paused {name} for 1.5 s")
        elif fault == "kill":
            name = rng.choice(names)
            pid = pool.procs[name].pid
            killed.add(pid)
            pool.kill(name)
            restarted += 1
            new = f"{name}r{restarted}"
            names[names.index(name)] = new
            pool.start(new, concurrency=4)
            faults.append(f"killed {name} (-9), started {new}")
        elif fault == "redis":
            try:
                redis.Redis.from_url(server.url).shutdown(save=True)
            except redis.exceptions.ConnectionError:
                pass
            server.proc.wait(10)
            time.sleep(1.0)
            server.start()
            faults.append("restarted Redis (AOF)")
        elif fault == "redeliver":
            try:
                why = redeliver_phase_4(env)
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                why = f"{type(exc).__name__}: {exc}"
            faults.append("delivered phase 4 a second time" if why is None else f"could not redeliver: {why}")


def redeliver_phase_4(env: dict) -> "str | None":
    """Send the run's phase 4 message again: same task id, the state reference it was sent with.
    None when sent, else why not."""
    from dispatch.config import Settings
    from dispatch.runtime.app import create_app
    from dispatch.store import Deployment
    from dispatch.tasks.names import PHASE_TASK_NAMES, phase_queue

    settings = Settings.from_env(env)
    app = create_app(settings)
    deployment = Deployment(settings, app.backend.client)
    runs = deployment.store.list_runs(1)
    if not runs:
        return "no run in the store"
    state = runs[0]
    labels = deployment.ledger(state.run_id).tasks()
    phase_4 = next((cid for cid, label in labels.items() if label == "phase_4"), None)
    if phase_4 is None or not deployment.scheduler(state.run_id).exists():  # the scheduler's record, not the
        return f"phase 4 not under way (phase 4 id {phase_4})"              # status, says phase 4 is running
    app.signature(PHASE_TASK_NAMES[4], args=({"run_id": state.run_id, "version": state.version - 1},),
                  queue=phase_queue(settings.key_prefix)).apply_async(task_id=phase_4)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dispatch-chaos-") as tmp:
        report = run_chaos(Path(tmp), args.tasks, args.workers, args.kills, args.seed)
    print(json.dumps({**report.__dict__, "unexplained_reruns": report.unexplained_reruns}, indent=2))
    ok = report.exit_code == 0 and report.results == report.succeeded == args.tasks \
        and report.unexplained_reruns == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
