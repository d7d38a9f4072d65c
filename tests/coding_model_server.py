"""A scripted model server on loopback for driving real coding-agent CLIs in tests.

Coding agents (Claude Code, Codex, aider, mini-swe-agent) are programs that talk
to a model over HTTP and act on what it answers: call a tool that writes a file,
run a shell command, emit an edit block.  To test dispatch's presets with the
real programs, without a network or a real model, this server speaks the three
wire protocols they use and answers with a fixed script:

- OpenAI chat completions ``POST /v1/chat/completions`` (plain and streaming
  SSE with tool-call deltas and a final usage chunk) — aider, mini-swe-agent;
- OpenAI Responses ``POST /v1/responses`` (plain and streaming SSE events:
  ``response.created``, ``response.output_item.added/done``,
  ``response.output_text.delta``, ``response.completed``) — Codex;
- Anthropic Messages ``POST /v1/messages`` (plain and streaming events:
  ``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``)
  plus ``/v1/messages/count_tokens`` — Claude Code.

A script is a list of ``Step`` per model name.  For a request that offers
tools, the step is chosen by the conversation's position (how many tool
results the request already carries), so retries and side requests cannot
shift the script; for a request without tools (aider's edit blocks, commit
messages) the model's steps are served in order.  Past the end of a script, or
for a model with no script, ``fallback`` is served (a short text answer: CLIs
make side requests such as titles).  Every request is recorded.

Usage numbers are the step's ``usage`` so tests can check token accounting
exactly.  Hand-written (no library does this), standard library only.
"""
from __future__ import annotations

import itertools
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union


@dataclass
class ToolCall:
    """A tool the model calls.  ``arguments`` is the JSON object of a function
    tool; ``input`` the free text of a custom (grammar) tool such as Codex's
    ``apply_patch``."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    input: Optional[str] = None


@dataclass
class Step:
    """One model turn: some text and/or tool calls."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    usage: tuple[int, int] = (120, 30)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    model: str
    position: int
    served: Optional[Step]


StepSource = Union[Step, Callable[[Recorded], Step]]
_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def tool_result_count(body: dict) -> int:
    """How many tool results a request's conversation already holds (any protocol)."""
    count = 0
    for message in body.get("messages") or []:
        if message.get("role") == "tool":
            count += 1
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for block in content if isinstance(block, dict) and block.get("type") == "tool_result")
    items = body.get("input")
    if isinstance(items, list):
        count += sum(1 for item in items if isinstance(item, dict)
                     and item.get("type") in ("function_call_output", "custom_tool_call_output"))
    return count


class CodingModelServer:
    def __init__(self, fallback: Optional[Step] = None) -> None:
        self.scripts: dict[str, list[StepSource]] = {}
        self.fallback = fallback or Step(text="ok", usage=(10, 2))
        self.requests: list[Recorded] = []
        self._served_plain: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "CodingModelServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "CodingModelServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---------------------------------------------------------------- scripting
    def script(self, model: str, *steps: StepSource) -> None:
        with self._lock:
            self.scripts[model] = list(steps)

    def requests_for(self, model: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def _choose(self, recorded: Recorded, has_tools: bool) -> Step:
        with self._lock:
            steps = self.scripts.get(recorded.model)
            if steps is None:
                return self.fallback
            if has_tools:
                position = tool_result_count(recorded.body)
            else:
                position = self._served_plain[recorded.model]
                self._served_plain[recorded.model] += 1
            recorded.position = position
        if position >= len(steps):
            return self.fallback
        source = steps[position]
        return source(recorded) if callable(source) else source

    # ---------------------------------------------------------------- HTTP
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        path = handler.path.split("?", 1)[0]
        recorded = Recorded(handler.command, path, {k.lower(): v for k, v in handler.headers.items()}, body,
                            str(body.get("model", "")) if isinstance(body, dict) else "", -1, None)
        with self._lock:
            self.requests.append(recorded)
        if handler.command == "GET" and path.endswith("/models"):
            return self._send_json(handler, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "scripted"} for name in self.scripts]})
        if path.endswith("/messages/count_tokens"):
            return self._send_json(handler, {"input_tokens": max(1, len(raw) // 4)})
        if handler.command != "POST" or not isinstance(body, dict):
            return self._send_json(handler, {"error": {"message": f"no route {handler.command} {path}"}}, 404)
        has_tools = bool(body.get("tools"))
        step = self._choose(recorded, has_tools)
        recorded.served = step
        stream = bool(body.get("stream"))
        if path.endswith("/chat/completions"):
            return self._chat(handler, recorded.model, step, stream)
        if path.endswith("/responses"):
            return self._responses(handler, recorded.model, step, stream, body)
        if path.endswith("/messages"):
            return self._anthropic(handler, recorded.model, step, stream)
        return self._send_json(handler, {"error": {"message": f"no route POST {path}"}}, 404)

    def _send_json(self, handler: BaseHTTPRequestHandler, payload: Any, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _send_sse(self, handler: BaseHTTPRequestHandler, events: list[tuple[Optional[str], Any]]) -> None:
        """Server-sent events, closed after the last one (no chunked encoding needed)."""
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            handler.wfile.write(frame.encode())
            handler.wfile.flush()

    # ---------------------------------------------------------------- OpenAI chat completions
    def _chat(self, handler: BaseHTTPRequestHandler, model: str, step: Step, stream: bool) -> None:
        cid, created = _new_id("chatcmpl"), 1_700_000_000
        calls = [{"id": _new_id("call"), "type": "function",
                  "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in step.calls]
        finish = "tool_calls" if calls else "stop"
        usage = {"prompt_tokens": step.usage[0], "completion_tokens": step.usage[1],
                 "total_tokens": sum(step.usage)}
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
            if calls:
                message["tool_calls"] = calls
            return self._send_json(handler, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        events: list[tuple[Optional[str], Any]] = [
            (None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})]
        for piece in _pieces(step.text):
            events.append((None, {**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                       "finish_reason": None}]}))
        for index, call in enumerate(calls):
            events.append((None, {**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                {"index": index, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}]}}]}))
            for piece in _pieces(call["function"]["arguments"]):
                events.append((None, {**base, "choices": [{"index": 0, "finish_reason": None, "delta": {
                    "tool_calls": [{"index": index, "function": {"arguments": piece}}]}}]}))
        events.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        events.append((None, {**base, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._send_sse(handler, events)

    # ---------------------------------------------------------------- OpenAI Responses
    def _responses(self, handler: BaseHTTPRequestHandler, model: str, step: Step, stream: bool,
                   body: dict) -> None:
        rid = _new_id("resp")
        custom_tools = {t.get("name") for t in body.get("tools") or [] if t.get("type") == "custom"}
        items: list[dict[str, Any]] = []
        if step.text:
            items.append({"type": "message", "id": _new_id("msg"), "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": step.text, "annotations": []}]})
        for call in step.calls:
            if call.input is not None or call.name in custom_tools:
                items.append({"type": "custom_tool_call", "id": _new_id("ctc"), "call_id": _new_id("call"),
                              "name": call.name, "input": call.input or "", "status": "completed"})
            else:
                items.append({"type": "function_call", "id": _new_id("fc"), "call_id": _new_id("call"),
                              "name": call.name, "arguments": json.dumps(call.arguments), "status": "completed"})
        usage = {"input_tokens": step.usage[0], "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": step.usage[1], "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": sum(step.usage)}
        response = {"id": rid, "object": "response", "created_at": 1_700_000_000, "model": model,
                    "status": "completed", "output": items, "usage": usage}
        if not stream:
            return self._send_json(handler, response)
        seq = itertools.count()
        events: list[tuple[Optional[str], Any]] = []

        def emit(name: str, **data: Any) -> None:
            events.append((name, {"type": name, "sequence_number": next(seq), **data}))

        emit("response.created", response={**response, "status": "in_progress", "output": [], "usage": None})
        for index, item in enumerate(items):
            if item["type"] == "message":
                emit("response.output_item.added", output_index=index,
                     item={**item, "status": "in_progress", "content": []})
                for piece in _pieces(step.text):
                    emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                         delta=piece)
                emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                     text=step.text)
            else:
                emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            emit("response.output_item.done", output_index=index, item=item)
        emit("response.completed", response=response)
        self._send_sse(handler, events)

    # ---------------------------------------------------------------- Anthropic Messages
    def _anthropic(self, handler: BaseHTTPRequestHandler, model: str, step: Step, stream: bool) -> None:
        mid = _new_id("msg")
        blocks: list[dict[str, Any]] = []
        if step.text:
            blocks.append({"type": "text", "text": step.text})
        for call in step.calls:
            blocks.append({"type": "tool_use", "id": _new_id("toolu"), "name": call.name, "input": call.arguments})
        stop = "tool_use" if step.calls else "end_turn"
        usage = {"input_tokens": step.usage[0], "output_tokens": step.usage[1],
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
                   "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not stream:
            return self._send_json(handler, message)
        events: list[tuple[Optional[str], Any]] = [
            ("message_start", {"type": "message_start", "message": {
                **message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}})]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {"type": "text", "text": ""}}))
                for piece in _pieces(block["text"]):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {**block, "input": {}}}))
                for piece in _pieces(json.dumps(block["input"])):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": piece}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": step.usage[1]}}))
        events.append(("message_stop", {"type": "message_stop"}))
        self._send_sse(handler, events)


def _pieces(text: str, size: int = 24) -> list[str]:
    """Split a text into stream deltas, as a model would send it."""
    return [text[i:i + size] for i in range(0, len(text), size)]
