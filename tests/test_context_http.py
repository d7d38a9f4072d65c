"""The ``http`` retriever against a real HTTP server on a free local port."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.context import ContextGatheringError, gather_context
from dispatch.common.breaker import BREAKERS, CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen
from dispatch.context.retrievers import HttpRetriever, RetrievalEnv, RetrievalServiceError, build_retriever
from dispatch.models import DispatchInput, TaskSpec


class Service:
    """What the fake retrieval service does next, and what it has seen."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_first = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.fail_first > 0:
            self.fail_first -= 1
            return 500, b'{"error": "warming up"}'
        if self.mode == "slow":
            time.sleep(1.0)
        if self.mode == "500":
            return 500, b'{"error": "boom"}'
        if self.mode == "404":
            return 404, b'{"error": "no such index"}'
        if self.mode == "malformed":
            return 200, b'{"items": [{"content": "half an ans'
        if self.mode == "no-items":
            return 200, b'{"answer": 42}'
        items = [
            {"content": f"Answer about {body['query']}\n", "source": "kb/answers.md", "score": 0.9, "id": "kb-1"},
            {"content": "def f():\n    return 1\n", "path": "src/f.py", "start": 3, "end": 4, "score": 0.5},
            {"source": "kb/broken.md"},  # no content: skipped, not fatal
        ]
        return 200, json.dumps({"items": items[: body.get("top_k", 10)]}).encode()


@pytest.fixture
def service() -> Iterator[tuple[Service, str]]:
    state = Service()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.headers.append(dict(self.headers))
            status, payload = state.answer(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/search"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fresh_breakers() -> Iterator[None]:
    BREAKERS.reset()
    yield
    BREAKERS.reset()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(url: str, tmp_path: Path, breaker: CircuitBreaker | None = None, **options: Any) -> HttpRetriever:
    options = {"timeout_s": 0.25, "retries": 1, "backoff_s": 0.01, **options}
    retriever = build_retriever("kb", ComponentConfig(kind="http", url=url, **options), RetrievalEnv(tmp_path))
    assert isinstance(retriever, HttpRetriever)
    retriever.breaker = breaker
    retriever.prepare()
    return retriever


def test_normal_answer_becomes_items(service, tmp_path, monkeypatch) -> None:
    state, url = service
    monkeypatch.setenv("KB_TOKEN", "s3cret")
    retriever = make(url, tmp_path, api_key_env="KB_TOKEN", headers={"X-Team": "infra"})
    items = retriever.search("stock levels", 5)
    retriever.close()
    assert state.requests == [{"query": "stock levels", "top_k": 5}]
    assert state.headers[0]["Authorization"] == "Bearer s3cret" and state.headers[0]["X-Team"] == "infra"
    assert [i.id for i in items] == ["kb-1", "src/f.py:3-4"]
    first, second = items
    assert first.content == "Answer about stock levels\n" and first.score == 0.9 and first.tokens > 0
    assert first.retriever == "kb" and first.query == "stock levels"
    assert second.metadata["path"] == "src/f.py" and second.metadata["start"] == 3


def test_missing_key_variable_is_a_clear_error(service, tmp_path, monkeypatch) -> None:
    _, url = service
    monkeypatch.delenv("KB_TOKEN_MISSING", raising=False)
    with pytest.raises(RetrievalServiceError, match="KB_TOKEN_MISSING"):
        make(url, tmp_path, api_key_env="KB_TOKEN_MISSING")


def test_slow_service_times_out_after_retries(service, tmp_path) -> None:
    state, url = service
    state.mode = "slow"
    retriever = make(url, tmp_path, retries=1)
    started = time.monotonic()
    with pytest.raises(RetrievalServiceError, match="timed out after 0.25s"):
        retriever.search("q", 3)
    assert time.monotonic() - started < 0.95  # two short timeouts, not the server's full second
    assert len(state.requests) == 2


def test_server_error_is_retried_then_reported(service, tmp_path) -> None:
    state, url = service
    state.mode = "500"
    with pytest.raises(RetrievalServiceError, match=r"HTTP 500 \(after 3 attempts\)"):
        make(url, tmp_path, retries=2).search("q", 3)
    assert len(state.requests) == 3


def test_transient_error_recovers_on_retry(service, tmp_path) -> None:
    state, url = service
    state.fail_first = 1
    items = make(url, tmp_path, retries=2).search("q", 3)
    assert len(items) == 2 and len(state.requests) == 2


@pytest.mark.parametrize("mode,message", [("malformed", "malformed JSON"), ("no-items", "no 'items' list"),
                                          ("404", "HTTP 404")])
def test_bad_answers_are_not_retried(service, tmp_path, mode, message) -> None:
    state, url = service
    state.mode = mode
    with pytest.raises(RetrievalServiceError, match=message):
        make(url, tmp_path, retries=3).search("q", 3)
    assert len(state.requests) == 1


def test_breaker_opens_then_half_open_trial_closes_it(service, tmp_path) -> None:
    state, url = service
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=30, clock=clock)
    retriever = make(url, tmp_path, breaker=breaker, retries=0)
    state.mode = "500"
    for _ in range(2):
        with pytest.raises(RetrievalServiceError):
            retriever.search("q", 3)
    assert breaker.state == OPEN and len(state.requests) == 2
    with pytest.raises(CircuitOpen):
        retriever.search("q", 3)
    assert len(state.requests) == 2  # refused without calling

    clock.now += 31
    assert breaker.state == HALF_OPEN
    state.mode = "ok"
    assert len(retriever.search("q", 3)) == 2
    assert breaker.state == CLOSED and len(state.requests) == 3


def test_failed_half_open_trial_reopens(service, tmp_path) -> None:
    state, url = service
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    retriever = make(url, tmp_path, breaker=breaker, retries=0)
    state.mode = "500"
    with pytest.raises(RetrievalServiceError):
        retriever.search("q", 3)
    clock.now += 11
    with pytest.raises(RetrievalServiceError):
        retriever.search("q", 3)  # the trial call
    assert breaker.state == OPEN and len(state.requests) == 2
    with pytest.raises(CircuitOpen):
        retriever.search("q", 3)


def test_only_one_trial_call_while_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 6
    breaker.before_call()
    with pytest.raises(CircuitOpen, match="trial"):
        breaker.before_call()
    breaker.record_success()
    breaker.before_call()


def _request(tmp_path: Path) -> DispatchInput:
    (tmp_path / "ws").mkdir(exist_ok=True)
    (tmp_path / "ws" / "notes.md").write_text("stock levels are kept per warehouse\n")
    return DispatchInput(workspace_path=str(tmp_path / "ws"), rag_queries=["stock levels", "warehouse"],
                         tasks=[TaskSpec(task_id="t", agent="coder", description="d")])


def test_a_dead_service_among_retrievers_is_recorded_not_fatal(service, tmp_path) -> None:
    state, url = service
    state.mode = "500"
    config = DispatchConfig(retrievers={
        "workspace": ComponentConfig(kind="workspace"),
        "kb": ComponentConfig(kind="http", url=url, retries=0, breaker_failures=1, breaker_cooldown_s=60)})
    ctx = gather_context(_request(tmp_path), config, cache_dir=tmp_path / "cache")
    assert any(i.source == "notes.md" for i in ctx.items)
    assert ctx.errors[0].startswith("kb: query 'stock levels': ") and "HTTP 500" in ctx.errors[0]
    assert "circuit open" in ctx.errors[1]  # the breaker spared the second query a call
    assert len(state.requests) == 1 and set(ctx.retriever_timings_ms) == {"workspace", "kb"}


def test_every_retriever_failing_is_a_gathering_error(service, tmp_path) -> None:
    state, url = service
    state.mode = "500"
    config = DispatchConfig(retrievers={"kb": ComponentConfig(kind="http", url=url, retries=0)})
    with pytest.raises(ContextGatheringError, match="every retriever failed: kb: query"):
        gather_context(_request(tmp_path), config, cache_dir=tmp_path / "cache")


def test_service_items_join_the_global_context(service, tmp_path) -> None:
    _, url = service
    config = DispatchConfig(retrievers={"kb": ComponentConfig(kind="http", url=url)})
    ctx = gather_context(_request(tmp_path), config, cache_dir=tmp_path / "cache")
    ids = [i.id for i in ctx.items]
    assert ids[0] == "structure:workspace" and "src/f.py:3-4" in ids
    assert ctx.per_query_hits == {"stock levels": 2, "warehouse": 2}


def test_secret_headers_must_come_from_the_environment(service, tmp_path) -> None:
    _, url = service
    from dispatch.errors import ConfigError

    for header in ("Authorization", "X-Api-Key", "X-Auth-Token"):
        with pytest.raises(ConfigError, match=f"headers.{header}: secrets are read from the environment"):
            make(url, tmp_path, headers={header: "inline-secret"})
