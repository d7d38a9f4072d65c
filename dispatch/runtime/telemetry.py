"""OpenTelemetry for dispatch: one trace per run across every process, and the run's metrics.

Off by default, at zero cost: nothing from ``opentelemetry`` is imported
unless a standard ``OTEL_*`` exporter variable is set *and* the ``[otel]``
extra is installed (``OTEL_SDK_DISABLED=true`` turns it off again).  There is
no dispatch-specific exporter setting: the SDK's exporters read the standard
variables themselves (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``,
``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_METRIC_EXPORT_INTERVAL``, ...).

What is traced, and by whom:
- the submitting process: a root span ``dispatch.run`` around ``Runner.run``
  and one ``dispatch.phase`` span per phase it follows (``run_span``,
  ``phase_span``, which are no-ops when telemetry is off);
- across Celery messages: ``opentelemetry-instrumentation-celery`` injects the
  context into each message's headers and opens a span per task on the worker
  (``run/dispatch.agent``, ``run/dispatch.phase_2_task_planning``, ...), so
  every worker's spans join the client's trace;
- this module adds the ``dispatch.*`` attributes to those task spans (run id,
  task id, agent, worker, attempt, status, tokens, cost), read from the
  phase-4 scheduler's record of the task, and records the metrics;
- model calls: ``opentelemetry-instrumentation-httpx`` (dispatch's providers
  talk HTTP through httpx), inside the agent task's span.

Metrics (same SDK, any OTel exporter, Prometheus included): ``dispatch.tasks.finished``
(by agent and status), ``dispatch.task.duration`` (ms histogram),
``dispatch.tokens`` and ``dispatch.cost`` (spend counters), ``dispatch.tasks.waiting``
(agent tasks sent and not yet started, summed over every process).

Hand-written because the glue is dispatch's: which variables mean "on", which
task arguments carry the run and task ids, and where a task's result lives.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    from dispatch.models import Usage

log = logging.getLogger("dispatch.telemetry")

# any of these set (to something other than "none") asks for telemetry
EXPORT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER")
EXTRA_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http",
                 "opentelemetry.instrumentation.celery")
AGENT_TASK = "dispatch.agent"  # dispatch.tasks.names.AGENT_TASK (not imported: that would load the tasks)

_lock = threading.Lock()
_installed: Optional[bool] = None  # None: not decided yet in this process
_instruments: dict[str, Any] = {}


def requested(environ: Optional[dict[str, str]] = None) -> bool:
    """The environment asks for telemetry (a standard exporter variable is set, the SDK not disabled)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() not in ("", "none") for name in EXPORT_VARIABLES)


def extra_installed() -> bool:
    try:
        return all(importlib.util.find_spec(name) is not None for name in EXTRA_MODULES)
    except (ImportError, ValueError):
        return False


def install() -> bool:
    """Set up tracing and metrics for this process, once; False (and nothing imported) when off."""
    global _installed
    if _installed is not None:
        return _installed
    with _lock:
        if _installed is not None:
            return _installed
        if not requested():
            _installed = False
        elif not extra_installed():
            log.warning("OTEL_* is set but the [otel] extra is not installed (pip install 'dispatch[otel]'): "
                        "no telemetry")
            _installed = False
        else:
            _setup_sdk()
            _installed = True
    return _installed


def active() -> bool:
    return bool(_installed) or (_installed is None and install())


# ------------------------------------------------------------------ client spans
class SpanHandle:
    """What the runner may tell a span: the state it ended with.  A no-op when telemetry is off."""

    def __init__(self, span: Any = None) -> None:
        self.span = span

    def finish(self, state: Any) -> None:
        if self.span is None or state is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("dispatch.status", state.status)
        if state.status in ("failed", "cancelled"):
            self.span.set_status(Status(StatusCode.ERROR, f"run {state.status}"))


NOOP = SpanHandle()


@contextmanager
def run_span(state: Any) -> Iterator[SpanHandle]:
    """The run's root span in the submitting process; current while the phases are submitted,
    so the Celery messages carry it to the workers."""
    if not active():
        yield NOOP
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("dispatch")
    attributes = {"dispatch.run_id": state.run_id, "dispatch.phases": list(state.selected_phases),
                  "dispatch.tasks": len(state.tasks_data)}
    with tracer.start_as_current_span("dispatch.run", attributes=attributes,
                                      kind=trace.SpanKind.CLIENT) as span:
        yield SpanHandle(span)


@contextmanager
def phase_span(phase: Any, state: Any) -> Iterator[SpanHandle]:
    """One phase as the submitting process sees it (from its start to its result)."""
    if not active():
        yield NOOP
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("dispatch")
    attributes = {"dispatch.run_id": state.run_id, "dispatch.phase": phase.number,
                  "dispatch.phase_name": phase.title}
    with tracer.start_as_current_span(f"dispatch.phase {phase.number} {phase.title}",
                                      attributes=attributes) as span:
        yield PhaseHandle(span, phase)


class PhaseHandle(SpanHandle):
    def __init__(self, span: Any, phase: Any) -> None:
        super().__init__(span)
        self.phase = phase

    def finish(self, state: Any) -> None:
        result = state.result_for(self.phase) if state is not None else None
        if result is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("dispatch.success", result.success)
        self.span.set_attribute("dispatch.skipped", result.skipped)
        if not result.success:
            self.span.set_status(Status(StatusCode.ERROR, (result.error or "phase failed")[:200]))


# ------------------------------------------------------------------ the SDK
def _setup_sdk() -> None:
    from celery import signals
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    # one instance id per process: the cumulative metrics of two workers must not be taken for one series
    attributes = {"service.instance.id": f"{socket.gethostname()}-{os.getpid()}", "process.pid": os.getpid()}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "dispatch"
    resource = Resource.create(attributes)  # + OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    tracer_provider = TracerProvider(resource=resource)
    for processor in _span_processors():
        tracer_provider.add_span_processor(processor)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=_metric_readers()))
    meter = metrics.get_meter("dispatch")
    _instruments.update(
        finished=meter.create_counter("dispatch.tasks.finished", unit="{task}",
                                      description="agent tasks finished, by agent and status"),
        duration=meter.create_histogram("dispatch.task.duration", unit="ms",
                                        description="agent task duration, by agent and status"),
        tokens=meter.create_counter("dispatch.tokens", unit="{token}",
                                    description="model tokens spent by agent tasks, by agent and direction"),
        cost=meter.create_counter("dispatch.cost", unit="USD", description="spend reported by agent tasks"),
        waiting=meter.create_up_down_counter("dispatch.tasks.waiting", unit="{task}",
                                             description="agent tasks sent and not yet started"),
    )
    # ours first: a receiver connected before the instrumentor's sees its span still current at postrun
    signals.before_task_publish.connect(_on_publish, weak=False)
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    CeleryInstrumentor().instrument()
    if importlib.util.find_spec("opentelemetry.instrumentation.httpx") is not None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()


def _span_processors() -> list[Any]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors = []
    for name in _exporter_names("OTEL_TRACES_EXPORTER"):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported by dispatch (otlp, console, none)", name)
    return processors


def _metric_readers() -> list[Any]:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    readers = []
    for name in _exporter_names("OTEL_METRICS_EXPORTER"):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "prometheus":
            readers.append(_prometheus_reader())
        elif name != "none":
            log.warning("OTEL_METRICS_EXPORTER=%s is not supported by dispatch (otlp, prometheus, console, none)",
                        name)
    return [reader for reader in readers if reader is not None]


def _prometheus_reader() -> Any:
    """The standard OTel Prometheus exporter, served on OTEL_EXPORTER_PROMETHEUS_HOST/PORT (default :9464)."""
    if importlib.util.find_spec("opentelemetry.exporter.prometheus") is None:
        log.warning("OTEL_METRICS_EXPORTER=prometheus needs opentelemetry-exporter-prometheus installed")
        return None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # a second process on the same host: it exports through the first one's port
        log.warning("prometheus exporter: cannot listen on %s:%s (%s)", host, port, exc)
    return PrometheusMetricReader()


def _exporter_names(variable: str) -> list[str]:
    raw = os.environ.get(variable, "otlp")
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


# ------------------------------------------------------------------ worker-side signals
def _agent_task_ids(args: Any) -> Optional[tuple[str, str]]:
    if isinstance(args, (list, tuple)) and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        return args[0], args[1]
    return None


def _on_publish(sender: Any = None, **_: Any) -> None:
    if sender == AGENT_TASK:
        _instruments["waiting"].add(1)


def _on_prerun(task: Any = None, **_: Any) -> None:
    if task is not None and task.name == AGENT_TASK:
        _instruments["waiting"].add(-1)


def _on_postrun(task: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
    """Give the task's span (the instrumentor's, still current) the dispatch.* attributes; count it."""
    from opentelemetry import trace

    if task is None:
        return
    span = trace.get_current_span()
    try:
        if task.name == AGENT_TASK:
            _agent_finished(task, span, args, retval)
        elif task.name.startswith("dispatch.phase_") and args and isinstance(args[0], dict):
            span.set_attribute("dispatch.run_id", str(args[0].get("run_id", "")))
            span.set_attribute("dispatch.phase", int(task.name.split("_")[1]))
    except Exception as exc:  # noqa: BLE001 - telemetry never fails a task
        log.debug("telemetry: %s on task %s", exc, task.name)


def _agent_finished(task: Any, span: Any, args: Any, retval: Any) -> None:
    from opentelemetry.trace import Status, StatusCode

    from dispatch.models import TaskResult
    from dispatch.tasks.support import deployment_of

    ids = _agent_task_ids(args)
    if ids is None:
        return
    run_id, task_id = ids
    span.set_attribute("dispatch.run_id", run_id)
    span.set_attribute("dispatch.task_id", task_id)
    if isinstance(retval, dict) and retval.get("duplicate"):
        span.set_attribute("dispatch.duplicate", True)  # a redelivery: the first run's span has the result
        return
    # the result this very task recorded (``agent_task`` leaves it on its request): once the chord's last
    # part has returned, its collect step may already have closed the run and dropped the scheduler's hash
    result = getattr(task.request, "dispatch_result", None)
    if not isinstance(result, TaskResult):
        scheduler = deployment_of(task.app).scheduler(run_id)
        raw = scheduler.client.hget(scheduler.key("results"), task_id)
        if raw is None:
            return
        result = TaskResult.model_validate_json(raw)
    outcome = task_status(result)
    attributes: dict[str, Any] = {"dispatch.agent": result.agent, "dispatch.worker": result.worker or "",
                                  "dispatch.attempt": result.attempts, "dispatch.status": outcome,
                                  "dispatch.duration_ms": result.duration_ms}
    usage = spend_of(result.usage)
    for key, value in usage.items():
        attributes[f"dispatch.{key}"] = value
    span.set_attributes(attributes)
    if not result.success:
        span.set_status(Status(StatusCode.ERROR, (result.error or outcome)[:200]))
    labels = {"agent": result.agent, "status": outcome}
    _instruments["finished"].add(1, labels)
    _instruments["duration"].record(result.duration_ms, labels)
    for direction in ("input", "output"):
        if usage.get(f"tokens.{direction}"):
            _instruments["tokens"].add(usage[f"tokens.{direction}"], {"agent": result.agent, "direction": direction})
    if usage.get("cost_usd"):
        _instruments["cost"].add(usage["cost_usd"], {"agent": result.agent})


def task_status(result: Any) -> str:
    """succeeded, failed, skipped, cancelled or timed_out: one word a dashboard can group by."""
    if result.success:
        return "succeeded"
    if result.skipped:
        return "skipped"
    error = (result.error or "").lower()
    if error == "cancelled":
        return "cancelled"
    return "timed_out" if "timed out" in error else "failed"


def spend_of(usage: Optional["Usage"]) -> dict[str, Any]:
    """A task's span attributes for its spend, from its typed ``TaskResult.usage`` (every attempt's calls):
    ``tokens.input``, ``tokens.output`` and, when a price was known, ``cost_usd``; none without a call."""
    if usage is None or not (usage.calls or usage.total_tokens):
        return {}
    spend: dict[str, Any] = {"tokens.input": usage.input_tokens, "tokens.output": usage.output_tokens}
    if usage.cost_usd is not None:
        spend["cost_usd"] = float(usage.cost_usd)
    return spend


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (a short-lived process about to exit)."""
    if not _installed:
        return
    from opentelemetry import metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        force = getattr(provider, "force_flush", None)
        if force is not None:
            force(timeout_ms)
