"""P6: phases 0 and 1 side by side (the phase DAG) against the sequence, with a slow retriever and a slow
validator, through the real CLI in embedded mode: the wall should be about the slower of the two, not the sum.

    .venv/bin/python bench/bench_phase_dag.py [--delay 1.0]

``SlowServices`` (also used by ``tests/test_phase_dag*.py``) is one HTTP server on
a free loopback port: ``POST /search`` is an ``http`` retriever's service,
``POST /v1/chat/completions`` an ``openai`` validator's model; each sleeps
``delay_s`` and records when every request came in and was answered.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Call:
    path: str
    started: float  # time.time() when the request came in
    ended: float  # when the answer was sent


class SlowServices:
    """A slow retrieval service and a slow chat model on one loopback server (see the module docstring)."""

    def __init__(self, delay_s: float = 1.0, decision: str = "PASS") -> None:
        self.delay_s = delay_s
        self.decision = decision
        self.calls: list[Call] = []
        self.arrived: list[str] = []  # the path of every request as it comes in (answered or not yet)
        self._lock = threading.Lock()
        services = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                started = time.time()
                with services._lock:
                    services.arrived.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(services.delay_s)
                body = services.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with services._lock:
                    services.calls.append(Call(self.path, started, time.time()))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> dict:
        if path == "/search":
            return {"items": [{"content": "class ConnectionPool: a postgres connection pool", "source": "kb://pool",
                               "score": 0.9}]}
        if path == "/v1/chat/completions":
            score = 90 if self.decision == "PASS" else 10
            verdict = {"alignment_score": score, "recommendation": self.decision, "missing_requirements": []}
            return {"id": "c", "object": "chat.completion", "created": int(time.time()), "model": "slow",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(verdict)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
        return {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def config(self, parallel: bool = True, reads_context: bool = False) -> str:
        """A config file (TOML) using both services."""
        return "\n".join([
            "[phases]", f"parallel = {str(parallel).lower()}", "",
            "[quorum]", "cache_ttl_s = 0", "",
            "[retrievers.kb]", 'kind = "http"', f'url = "{self.url}/search"', "retries = 0", "timeout_s = 30", "",
            "[validators.slow]", 'kind = "openai"', f'base_url = "{self.url}/v1"', 'model = "slow"',
            'json_mode = "off"', "timeout_s = 30", *(["reads_context = true"] if reads_context else []), ""])

    def of(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def __enter__(self) -> "SlowServices":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_json(workspace: Path) -> str:
    """Two echo tasks the rules would pass, one RAG query (one retriever call)."""
    return json.dumps({
        "user_prompt": "Build a postgres adapter with a connection pool", "workspace_path": str(workspace),
        "rag_queries": ["postgres connection pool"],
        "tasks": [{"task_id": "pool", "agent": "echo", "description": "Implement the postgres connection pool",
                   "context_requirements": ["rag:postgres connection pool"]},
                  {"task_id": "adapter", "agent": "echo", "description": "Implement the postgres adapter",
                   "dependencies": ["pool"]}]})


def run_once(services: SlowServices, tmp: Path, parallel: bool) -> tuple[float, dict]:
    """One embedded CLI run with phases 0 and 1 enabled: (the process's wall in seconds, its JSON)."""
    config = tmp / f"dispatch-{parallel}.toml"
    config.write_text(services.config(parallel=parallel))
    (tmp / "ws").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_STATE_DIR"] = str(tmp / "state")
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, str(ROOT / "cli.py"), "--enable-context", "--enable-quorum", "--config",
                           str(config)], input=request_json(tmp / "ws"), capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=120)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dispatch exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def phases_wall_s(output: dict) -> float:
    """From the first phase's start to the last one's end, as the run recorded them (no process start-up)."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    ran = [p for p in output["phases_executed"] if not p["skipped"]]
    return max(at(p["completed_at"]) for p in ran) - min(at(p["started_at"]) for p in ran)


def run(delay_s: float = 1.0, repeat: int = 1) -> list[dict]:
    """Rows for ``run_all.py``: the best of ``repeat`` runs each way."""
    figures: dict[bool, dict[str, list[float]]] = {p: {"phases": [], "total": [], "sum": []} for p in (True, False)}
    with SlowServices(delay_s) as services, tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for parallel in (True, False):
                _wall, output = run_once(services, Path(tmp), parallel)
                figures[parallel]["phases"].append(phases_wall_s(output) * 1000)
                figures[parallel]["total"].append(output["timing_summary"]["total_duration_ms"])
                figures[parallel]["sum"].append(sum(p["duration_ms"] for p in output["timing_summary"]["phases"]))
    par, seq = figures[True], figures[False]
    return [
        {"name": f"P6 phases 0-4 wall, retriever + validator {delay_s:g}s each, parallel vs parallel=false",
         "value": round(min(par["phases"])), "unit": "ms", "baseline": round(min(seq["phases"])),
         "ratio": round(min(par["phases"]) / min(seq["phases"]), 2),
         "target": f"~ max, not sum (sum of phase durations {min(par['sum']):.0f} ms)"},
        {"name": "P6 the same, total_duration_ms (the CLI's wall: start-up included)",
         "value": round(min(par["total"])), "unit": "ms", "baseline": round(min(seq["total"])),
         "ratio": round(min(par["total"]) / min(seq["total"]), 2), "target": "(reference)"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds each slow call takes")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for row in run(args.delay, args.repeat):
        print(f"{row['name']}: {row['value']} ms vs {row['baseline']} ms (ratio {row['ratio']}; {row['target']})")
