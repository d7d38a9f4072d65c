"""A real local HTTP server that speaks the two model protocols, for tests.

``FakeLLMServer`` listens on 127.0.0.1 on a free port (a ``ThreadingHTTPServer``
in a daemon thread) and answers

- ``POST /v1/chat/completions`` (OpenAI chat completions; use ``openai_base_url``)
- ``POST /v1/messages`` (Anthropic Messages; use ``anthropic_base_url``)

from per-path queues of scripted ``Reply`` objects, recording every request it
got (path, headers, JSON body).  Nothing is mocked below the socket, so tests
exercise the real client: serialization, headers, timeouts, status codes.

    with FakeLLMServer() as server:
        server.openai(answer_text('{"recommendation": "PASS", "alignment_score": 90}'))
        server.openai(Reply(status=500), Reply(delay_s=2.0, text="late"))
        ... make_client({"provider": "openai", "base_url": server.openai_base_url, ...})
        server.requests[0].headers["authorization"]

``for_model(name, *replies)`` scripts answers by the request's ``model`` field
instead, whatever the path: several clients calling at once (a quorum) then get
their own answers in a deterministic order.  Model queues are served first.

When a queue is empty the server answers ``fallback`` (a ``Reply``, or a callable
taking the ``Recorded`` request) if set, else HTTP 599 "no scripted reply" so a
missing script shows up as a clear provider error.  The ``llm_server`` pytest
fixture yields a started server; import it into a test module to use it.

Each ``Recorded`` request has its arrival time (``at``), when and with what status
it was answered (``answered_at``, ``status``); ``max_in_flight`` is the most
requests it was ever handling at once (rate-limit tests).

``server.dialect = DIALECTS["lmstudio"]`` makes the OpenAI path answer
``response_format`` as that server documents (or, for llama-cpp-python, as the
real server answers): a form it refuses gets its error, without using up a
scripted reply; a form it takes is served from the queues as usual.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

import pytest

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass
class Reply:
    """One scripted answer.

    ``text`` is the model's answer text, wrapped in the protocol's envelope for
    the path it is served on; ``body`` is a whole JSON body sent as is; ``raw``
    is sent verbatim (malformed bodies); ``disconnect`` closes the socket
    without answering.  ``delay_s`` sleeps before answering.
    """

    text: Optional[str] = None
    body: Optional[dict] = None
    raw: Optional[str] = None
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False
    usage: tuple[int, int] = (11, 7)
    cut_off: bool = False  # the answer stopped at max_tokens (finish_reason "length" / stop_reason "max_tokens")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any
    at: float
    answered_at: Optional[float] = None  # time.monotonic() when the reply went out (None: not answered)
    status: Optional[int] = None  # the status it was answered with


Responder = Union[Reply, Callable[[Recorded], Reply]]


def answer_text(text: str, **kwargs: Any) -> Reply:
    return Reply(text=text, **kwargs)


def counted_answer(text: str, delay_s: float = 0.0) -> Callable[[Recorded], Reply]:
    """A responder answering ``text`` with usage counted from the request as a server would: one token per
    whitespace-separated word of its messages (input) and of the answer (output)."""
    def respond(recorded: Recorded) -> Reply:
        body = recorded.body if isinstance(recorded.body, dict) else {}
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []) if isinstance(m, dict))
        return Reply(text=text, usage=(words, len(text.split())), delay_s=delay_s)
    return respond


def verdict(recommendation: str, score: float, *missing: str, **extra: Any) -> Reply:
    """A well-formed validator answer as a model would write it."""
    answer = {"alignment_score": score, "recommendation": recommendation,
              "missing_requirements": list(missing), **extra}
    return Reply(text=json.dumps(answer))


def error_body(path: str, status: int, message: str) -> Reply:
    """The provider's own error envelope for ``path``."""
    if path == ANTHROPIC_PATH:
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
    else:
        body = {"error": {"message": message, "type": "server_error", "code": None}}
    return Reply(body=body, status=status)


def openai_envelope(text: str, model: str, usage: tuple[int, int], cut_off: bool = False) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if cut_off else "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                      "total_tokens": usage[0] + usage[1]}}


def anthropic_envelope(text: str, model: str, usage: tuple[int, int], cut_off: bool = False) -> dict:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens" if cut_off else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}


# ------------------------------------------------ how real servers answer response_format
def response_format_type(body: Any) -> Optional[str]:
    rf = body.get("response_format") if isinstance(body, dict) else None
    return rf.get("type") if isinstance(rf, dict) else None


@dataclass(frozen=True)
class Dialect:
    """One server's documented answer to each ``response_format`` type.

    ``accepts`` lists the types it serves; any other type gets ``refusal(type)``,
    or is ignored when ``refusal`` is None (Ollama).  ``needs_schema``: the types
    for which it requires the schema (vLLM refuses a ``json_schema`` without one).
    """

    name: str
    accepts: frozenset
    refusal: Optional[Callable[[str], Reply]]
    needs_schema: frozenset = frozenset()

    def answer(self, body: Any) -> Optional[Reply]:
        """The error this server gives ``body``, or None when it serves it."""
        kind = response_format_type(body)
        if kind is None or self.refusal is None:
            return None
        if kind not in self.accepts:
            return self.refusal(kind)
        if kind in self.needs_schema and not (body["response_format"].get("json_schema") or {}).get("schema"):
            return self.refusal(kind)
        return None


def _llama_cpp_python(kind: str) -> Reply:
    # llama-cpp-python 0.3.36's server, as it answered in tests/test_real_model.py: its error handler turns
    # the request's validation error into a 500 with the OpenAI envelope (the "HTTP 500 Input ...")
    message = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
               f"'msg': \"Input should be 'text' or 'json_object'\", 'input': '{kind}', "
               "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", "
               "line 376, in create_chat_completion\n    POST /v1/chat/completions")
    return Reply(body={"error": {"message": message, "type": "internal_server_error", "param": None,
                                 "code": None}}, status=500)


def _lmstudio(kind: str) -> Reply:
    # LM Studio: {"error": "'response_format.type' must be 'json_schema' or 'text'"}, HTTP 400
    return Reply(body={"error": "'response_format.type' must be 'json_schema' or 'text'"}, status=400)


def _vllm(kind: str) -> Reply:
    # vLLM's ErrorResponse for a request it cannot take (a json_schema without its schema)
    return Reply(body={"error": {"message": "response_format.json_schema: the JSON schema is required",
                                 "type": "BadRequestError", "param": "response_format", "code": 400}},
                 status=400)


def _vllm_legacy(kind: str) -> Reply:
    # vLLM before json_schema (0.5.x): FastAPI's validation error as its top-level ErrorResponse
    message = (f"[{{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
               f"'msg': \"Input should be 'text' or 'json_object'\", 'input': '{kind}'}}]")
    return Reply(body={"object": "error", "message": message, "type": "BadRequestError", "param": None,
                       "code": 400}, status=400)


def _no_response_format(kind: str) -> Reply:
    # a proxy (or old Azure API version) that knows no response_format at all
    return Reply(body={"error": {"message": "Unrecognized request argument supplied: response_format",
                                 "type": "invalid_request_error", "param": None, "code": None}}, status=400)


DIALECTS = {
    # llama-cpp-python[server]: text and json_object (with an optional "schema" it constrains to)
    "llama-cpp-python": Dialect("llama-cpp-python", frozenset({"text", "json_object"}), _llama_cpp_python),
    # LM Studio (docs: "Structured Output"): json_schema and text, never json_object
    "lmstudio": Dialect("lmstudio", frozenset({"text", "json_schema"}), _lmstudio),
    # vLLM (docs: "Structured Outputs"): json_schema, json_object, structural_tag
    "vllm": Dialect("vllm", frozenset({"text", "json_schema", "json_object", "structural_tag"}), _vllm,
                    needs_schema=frozenset({"json_schema"})),
    "vllm-0.5": Dialect("vllm-0.5", frozenset({"text", "json_object"}), _vllm_legacy),
    # Ollama (docs: "OpenAI compatibility"): json_object and json_schema; an unknown type is ignored
    "ollama": Dialect("ollama", frozenset({"text", "json_schema", "json_object"}), None),
    "no-response-format": Dialect("no-response-format", frozenset(), _no_response_format),
}


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.fallback: Optional[Responder] = None
        self.dialect: Optional[Dialect] = None  # how the OpenAI path answers response_format
        self._queues: dict[str, deque[Responder]] = defaultdict(deque)
        self._model_queues: dict[str, deque[Responder]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.in_flight = 0  # requests being handled now, and the most there ever were at once
        self.max_in_flight = 0
        # the server's own count of the usage it reported in its 200 answers: (input, output) tokens
        self.tokens_sent = [0, 0]

    # -- lifecycle
    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server._handle(self)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses
    @property
    def url(self) -> str:
        assert self._httpd, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- scripting
    def script(self, path: str, *replies: Responder) -> None:
        with self._lock:
            self._queues[path].extend(replies)

    def openai(self, *replies: Responder) -> None:
        self.script(OPENAI_PATH, *replies)

    def anthropic(self, *replies: Responder) -> None:
        self.script(ANTHROPIC_PATH, *replies)

    def for_model(self, model: str, *replies: Responder) -> None:
        with self._lock:
            self._model_queues[model].extend(replies)

    def pending(self, path: str) -> int:
        with self._lock:
            return len(self._queues[path])

    def requests_for(self, model: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if isinstance(r.body, dict) and r.body.get("model") == model]

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- serving
    def _next(self, recorded: Recorded) -> Reply:
        model = recorded.body.get("model") if isinstance(recorded.body, dict) else None
        with self._lock:
            queue = self._model_queues.get(model) if isinstance(model, str) else None
            if not queue:
                queue = self._queues[recorded.path]
            responder = queue.popleft() if queue else self.fallback
        if responder is None:
            return Reply(body={"error": {"message": f"no scripted reply for {recorded.path}"}}, status=599)
        return responder(recorded) if callable(responder) else responder

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        payload = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(payload) if payload else None
        except ValueError:
            body = payload.decode("utf-8", "replace")
        recorded = Recorded(path=handler.path, headers={k.lower(): v for k, v in handler.headers.items()},
                            body=body, at=time.monotonic())
        with self._lock:
            self.requests.append(recorded)
        refused = self.dialect.answer(body) if self.dialect and handler.path == OPENAI_PATH else None
        if handler.path not in (OPENAI_PATH, ANTHROPIC_PATH):
            reply = Reply(body={"error": {"message": f"unknown path {handler.path}"}}, status=404)
        else:
            reply = refused or self._next(recorded)
        if reply.delay_s and self._stopping.wait(reply.delay_s):
            return
        if reply.disconnect:
            handler.close_connection = True
            return
        model = body.get("model", "fake") if isinstance(body, dict) else "fake"
        if reply.raw is not None:
            data = reply.raw.encode()
            content_type = "text/plain"
        else:
            if reply.body is not None:
                document = reply.body
            elif handler.path == ANTHROPIC_PATH:
                document = anthropic_envelope(reply.text or "", model, reply.usage, reply.cut_off)
            else:
                document = openai_envelope(reply.text or "", model, reply.usage, reply.cut_off)
            if reply.body is None and reply.status == 200:
                with self._lock:
                    self.tokens_sent[0] += reply.usage[0]
                    self.tokens_sent[1] += reply.usage[1]
            data = json.dumps(document).encode()
            content_type = "application/json"
        try:
            handler.send_response(reply.status)
            handler.send_header("content-type", content_type)
            handler.send_header("content-length", str(len(data)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            recorded.answered_at, recorded.status = time.monotonic(), reply.status
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer


@pytest.fixture
def llm_server():
    """A started ``FakeLLMServer``, stopped after the test."""
    with FakeLLMServer() as server:
        yield server
