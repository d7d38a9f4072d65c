"""OpenTelemetry: one trace per run across the CLI and two real workers, seen by a real OTLP/HTTP
receiver on loopback (protobuf decoded with ``opentelemetry-proto``); off by default at zero cost."""
from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import PYTHON, ROOT, base_env, run_cli
from dispatch.runtime import telemetry
from llm_server import FakeLLMServer, Reply


def value_of(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP collector on 127.0.0.1: keeps every span and metric point it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.points: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver.add_traces(body)
                elif self.path == "/v1/metrics":
                    receiver.add_metrics(body)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append({
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex() or None, "name": span.name,
                            "attributes": {a.key: value_of(a.value) for a in span.attributes},
                            "status": span.status.code, "resource": resource, "scope": scope.scope.name})

    def add_metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        with self.lock:
            for resource_metrics in request.resource_metrics:
                pid = {a.key: value_of(a.value) for a in resource_metrics.resource.attributes}.get("process.pid")
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            value = point.count if kind == "histogram" else (
                                point.as_int if point.WhichOneof("value") == "as_int" else point.as_double)
                            self.points.append({"name": metric.name, "kind": kind, "pid": pid, "value": value,
                                                "attributes": {a.key: value_of(a.value) for a in point.attributes}})

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def otel_env(endpoint: str, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


def last_sums(points: list[dict], name: str) -> dict[tuple, float]:
    """Cumulative sums: the last point per process and attribute set, added over processes."""
    last: dict[tuple, float] = {}
    for point in points:
        if point["name"] == name:
            last[(point["pid"], tuple(sorted(point["attributes"].items())))] = point["value"]
    total: dict[tuple, float] = defaultdict(float)
    for (_, attributes), value in last.items():
        total[attributes] += value
    return dict(total)


# ----------------------------------------------------------------- off by default
# a CLI run in one process; BLOCK makes the opentelemetry packages unimportable, as without the extra
RUN_AND_LIST = """
import io, sys
if sys.argv[2] == "BLOCK":
    class NoOtel:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "opentelemetry":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoOtel())
sys.stdin = io.StringIO(sys.argv[1])
from dispatch.cli.main import main
code = main([])
from dispatch.runtime import telemetry
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
sys.stderr.write("INSTALLED=%s LOADED=%s\\n" % (telemetry._installed, ",".join(loaded)))
sys.exit(code)
"""


def run_in_one_process(tmp_path, block: bool, **otel: str) -> tuple[bool, list[str], str]:
    env = {k: v for k, v in base_env(tmp_path).items() if not k.startswith("OTEL_")}
    breakdown = json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "d"}]})
    proc = subprocess.run([PYTHON, "-c", RUN_AND_LIST, breakdown, "BLOCK" if block else "-"], env={**env, **otel},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["success"]
    report = proc.stderr.rsplit("INSTALLED=", 1)[1]
    installed, loaded = report.strip().split(" LOADED=")
    return installed == "True", [m for m in loaded.split(",") if m], proc.stderr


def test_telemetry_is_off_by_default_and_costs_nothing(tmp_path):
    assert not telemetry.requested({})
    assert not telemetry.requested({"OTEL_TRACES_EXPORTER": "none"})
    assert not telemetry.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert telemetry.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    # without the extra: a whole embedded run imports no opentelemetry module, with or without OTEL_* set
    assert run_in_one_process(tmp_path, block=True)[:2] == (False, [])
    installed, loaded, stderr = run_in_one_process(tmp_path, block=True,
                                                   OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert (installed, loaded) == (False, []) and "the [otel] extra is not installed" in stderr
    # with the extra but no OTEL_*: dispatch sets nothing up (redis-py itself imports the OTel metrics API
    # when it is installed, which is why only dispatch's own parts are checked here)
    installed, loaded, _ = run_in_one_process(tmp_path, block=False)
    assert not installed
    assert not [m for m in loaded if m.startswith(("opentelemetry.instrumentation", "opentelemetry.exporter",
                                                   "opentelemetry.sdk.trace"))]


def test_spend_and_status_of_task_results():
    from dispatch.models import Usage  # a task's typed usage (every attempt's calls), not its output
    assert telemetry.spend_of(Usage(input_tokens=11, output_tokens=7, cost_usd=0.002, calls=1)) == {
        "tokens.input": 11, "tokens.output": 7, "cost_usd": 0.002}
    assert telemetry.spend_of(Usage(input_tokens=11, calls=1)) == {"tokens.input": 11, "tokens.output": 0}
    assert telemetry.spend_of(None) == {} and telemetry.spend_of(Usage()) == {}


# ----------------------------------------------------------------- one trace across two workers
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_run_on_two_workers_is_one_trace_with_every_agent_task_span(distributed, tmp_path):
    with OtlpReceiver() as receiver, FakeLLMServer() as llm:
        llm.fallback = Reply(text="a short summary", usage=(13, 5))
        env = distributed["env"]
        # the pool starts workers with this env; each worker reads the model's key from its own environment
        env.update(otel_env(receiver.endpoint, "dispatch-worker"), TEST_OTEL_KEY="k")
        workers = distributed["workers"]
        workers.start("w1", concurrency=2)
        workers.start("w2", concurrency=2)
        config = tmp_path / "agents.json"
        config.write_text(json.dumps({"agents": {"writer": {
            "kind": "llm", "provider": "openai", "base_url": llm.openai_base_url, "model": "m",
            "api_key_env": "TEST_OTEL_KEY"}, "lister": {"kind": "shell", "command": ["sh", "-c", "echo listed"]}}}))
        tasks = [{"task_id": "plan", "agent": "sleep", "description": "plan", "input_data": {"seconds": 0.1}},
                 *({"task_id": f"part{i}", "agent": "sleep", "description": f"part {i}",
                    "input_data": {"seconds": 0.3}, "dependencies": ["plan"]} for i in range(4)),
                 {"task_id": "summary", "agent": "writer", "description": "summarise the parts",
                  "dependencies": [f"part{i}" for i in range(4)]},
                 {"task_id": "list", "agent": "lister", "description": "list what the plan made",
                  "dependencies": ["plan"]}]
        client_env = {**env, **otel_env(receiver.endpoint, "dispatch-cli")}
        done = run_cli(["--config", str(config)], stdin=json.dumps({"tasks": tasks}), env=client_env)
        assert done.returncode == 0, done.stderr
        run_id = done.json["run_id"]
        assert {r["worker"].split("@")[0] for r in done.json["results"]} == {"w1", "w2"}
        workers.stop_all()  # workers flush their spans and metrics on shutdown

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with receiver.lock:
                agent_spans = [s for s in receiver.spans if s["attributes"].get("dispatch.task_id")
                               and s["attributes"].get("dispatch.run_id") == run_id]
            if len(agent_spans) >= len(tasks):
                break
            time.sleep(0.2)
        spans = list(receiver.spans)

    run_spans = [s for s in spans if s["attributes"].get("dispatch.run_id") == run_id]
    trace_ids = {s["trace_id"] for s in run_spans}
    assert len(trace_ids) == 1, trace_ids
    trace = [s for s in spans if s["trace_id"] in trace_ids]
    by_id = {s["span_id"]: s for s in trace}
    roots = [s for s in trace if s["parent"] is None]
    assert [r["name"] for r in roots] == ["dispatch.run"]
    root = roots[0]
    assert root["resource"]["service.name"] == "dispatch-cli" and root["attributes"]["dispatch.status"] == "succeeded"
    assert all(s["parent"] in by_id for s in trace if s is not root), "a span whose parent never arrived"
    phases = sorted(s["attributes"]["dispatch.phase"] for s in trace if s["name"].startswith("dispatch.phase"))
    assert phases == [2, 3, 4]
    assert all(by_id[s["parent"]] is root for s in trace if s["name"].startswith("dispatch.phase"))

    def ancestors(span: dict) -> list[dict]:
        chain = []
        while span["parent"] is not None:
            span = by_id[span["parent"]]
            chain.append(span)
        return chain

    agents = {s["attributes"]["dispatch.task_id"]: s for s in trace if s["name"] == "run/dispatch.agent"}
    assert set(agents) == {t["task_id"] for t in tasks}
    for task in tasks:
        span = agents[task["task_id"]]
        attrs = span["attributes"]
        assert attrs["dispatch.status"] == "succeeded" and attrs["dispatch.attempt"] == 1
        assert attrs["dispatch.agent"] == task["agent"] and attrs["dispatch.worker"].split("@")[0] in ("w1", "w2")
        assert span["resource"]["service.name"] == "dispatch-worker"
        assert ancestors(span)[-1] is root
        for dependency in task.get("dependencies", []):  # sent by whichever dependency finished last
            assert any(a["attributes"].get("dispatch.task_id") in task["dependencies"] for a in ancestors(span))
    assert {s["attributes"]["dispatch.worker"].split("@")[0] for s in agents.values()} == {"w1", "w2"}
    summary = agents["summary"]["attributes"]
    assert summary["dispatch.tokens.input"] == 13 and summary["dispatch.tokens.output"] == 5
    model_calls = [s for s in trace if s["scope"].startswith("opentelemetry.instrumentation.httpx")
                   and by_id[s["parent"]] is agents["summary"]]
    assert model_calls, "the model call is not inside the summary task's span"
    processes = [s for s in trace if s["name"] == "dispatch.agent.process"]
    assert [by_id[s["parent"]] for s in processes] == [agents["list"]], "the shell agent's process span"
    assert processes[0]["attributes"]["process.exit.code"] == 0
    workers_seen = {s["attributes"].get("dispatch.worker") for s in agents.values()}
    assert len(workers_seen) == 2

    finished = last_sums(receiver.points, "dispatch.tasks.finished")
    assert finished[(("agent", "sleep"), ("status", "succeeded"))] == 5
    assert finished[(("agent", "lister"), ("status", "succeeded"))] == 1
    assert finished[(("agent", "writer"), ("status", "succeeded"))] == 1
    tokens = last_sums(receiver.points, "dispatch.tokens")
    assert tokens[(("agent", "writer"), ("direction", "input"))] == 13
    durations = last_sums(receiver.points, "dispatch.task.duration")
    assert sum(durations.values()) == len(tasks)
    waiting = last_sums(receiver.points, "dispatch.tasks.waiting")
    assert sum(waiting.values()) == 0  # every agent task sent was started
