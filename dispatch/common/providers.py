"""Model-provider client: one small synchronous HTTP client per wire protocol.

Two protocols cover nearly every model server: OpenAI chat completions (OpenAI,
Ollama's ``/v1``, vLLM, LM Studio, OpenRouter, ...) and the Anthropic Messages
API (Anthropic and Anthropic-compatible endpoints).  The quorum validators, the
planner and the ``llm`` agent kind all talk to models through ``make_client``,
so timeouts, error classification and secret handling live in one place.

Conventions, as the providers' own SDKs have them:

- ``base_url`` for ``openai`` includes the version (``https://api.openai.com/v1``,
  ``http://localhost:11434/v1``); the client posts to ``{base_url}/chat/completions``.
- ``base_url`` for ``anthropic`` does not (``https://api.anthropic.com``); the
  client posts to ``{base_url}/v1/messages``.
- The API key is read from ``os.environ[api_key_env]`` at call time, on the
  process that makes the call, and is never stored on the client, in a reply, or
  in an error message.  When ``api_key_env`` is not given, the provider's usual
  variable (``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``) is used if it is set and
  the request goes out without a key otherwise (local servers need none).  When
  it is given and the variable is unset, the call fails with a clear error.

Errors are ``ProviderError`` with ``transient=True`` for what a later attempt may
cure and ``False`` otherwise (401, 400, a body that is not the protocol): which
is which, key reading and error texts are ``common.http``'s policy, shared with
every other JSON-over-HTTP call.  The client does not retry by itself: callers
own their retry and circuit-breaker policy (``common.backoff``, ``common.breaker``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import httpx

from dispatch.common.http import HTTPCallError, MissingKey, auth_headers, post_json, read_key, secret_header
from dispatch.errors import ConfigError

PROVIDERS = ("openai", "anthropic")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
ANTHROPIC_VERSION = "2023-06-01"
JSON_MODES = ("schema", "object", "off")


class ProviderError(HTTPCallError):
    """A model call that did not produce a reply."""


@dataclass
class ChatReply:
    text: str
    latency_ms: float
    raw: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # {"input_tokens": n, "output_tokens": m} when known


class ChatClient(Protocol):
    def complete(self, system: str, messages: list[dict], *,
                 json_schema: Optional[dict] = None) -> ChatReply: ...


@dataclass(frozen=True)
class ClientOptions:
    """The validated, secret-free options of one client."""

    provider: str
    model: str
    base_url: str
    api_key_env: Optional[str]
    api_key_required: bool
    timeout_s: float = 30.0
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    json_mode: str = "schema"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, options: dict[str, Any]) -> "ClientOptions":
        provider = options.get("provider")
        if provider not in PROVIDERS:
            raise ConfigError(f"provider: must be one of {', '.join(PROVIDERS)} (got {provider!r})")
        model = options.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError("model: a model name is required")
        base_url = options.get("base_url") or DEFAULT_BASE_URLS[provider]
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url: must be an http(s) URL (got {base_url!r})")
        key_env = options.get("api_key_env")
        if key_env is not None and not isinstance(key_env, str):
            raise ConfigError("api_key_env: must be the name of an environment variable")
        headers = options.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError("headers: must be a table of strings")
        if secret_header(headers) is not None:
            raise ConfigError("headers: credentials are read from the environment (api_key_env), not headers")
        json_mode = options.get("json_mode", "schema")
        if json_mode not in JSON_MODES:
            raise ConfigError(f"json_mode: must be one of {', '.join(JSON_MODES)} (got {json_mode!r})")
        return cls(
            provider=provider, model=model.strip(), base_url=base_url.rstrip("/"),
            api_key_env=key_env or (None if key_env == "" else DEFAULT_KEY_ENVS[provider]),
            api_key_required=bool(key_env),
            timeout_s=_number(options, "timeout_s", 30.0, positive=True),
            temperature=_number(options, "temperature", None),
            max_tokens=_integer(options, "max_tokens", 1024 if provider == "anthropic" else None),
            json_mode=json_mode, headers=tuple(sorted(headers.items())))


def _number(options: dict, key: str, default: Optional[float], positive: bool = False) -> Optional[float]:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise ConfigError(f"{key}: must be a {'positive ' if positive else ''}number (got {value!r})")
    return float(value)


def _integer(options: dict, key: str, default: Optional[int]) -> Optional[int]:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: must be a positive integer (got {value!r})")
    return value


class HTTPChatClient:
    """Shared plumbing: one pooled ``httpx.Client``, timing, error classification."""

    path = ""

    def __init__(self, options: ClientOptions, transport: Optional[httpx.BaseTransport] = None) -> None:
        self.options = options
        self._http = httpx.Client(timeout=httpx.Timeout(options.timeout_s), transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.options.model!r}, base_url={self.options.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def complete(self, system: str, messages: list[dict], *,
                 json_schema: Optional[dict] = None) -> ChatReply:
        key = self._api_key()
        if json_schema is not None:
            # Stated in the prompt as well: not every compatible server honours response_format.
            system = (system + "\n\n" if system else "") + (
                "Respond with a single JSON object that matches this JSON Schema:\n"
                + json.dumps(json_schema, separators=(",", ":")))
        body = self._body(system, messages, json_schema)
        raw, latency_ms = self._post(body, key)
        text, usage = self._parse(raw)
        return ChatReply(text=text, latency_ms=latency_ms, raw=raw, usage=usage)

    # -- per protocol
    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict]) -> dict:
        raise NotImplementedError

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        raise NotImplementedError

    def _parse(self, raw: dict) -> tuple[str, dict]:
        raise NotImplementedError

    # -- shared
    def _api_key(self) -> Optional[str]:
        try:
            return read_key(self.options.api_key_env, required=self.options.api_key_required)
        except MissingKey as exc:
            raise ProviderError(f"{self.options.provider}: {exc}") from None

    def _post(self, body: dict, key: Optional[str]) -> tuple[dict, float]:
        headers = {"content-type": "application/json", **dict(self.options.headers), **self._auth_headers(key)}
        try:
            reply = post_json(self._http, self.options.base_url + self.path, body, label=self.options.provider,
                              headers=headers, key=key)
        except HTTPCallError as exc:
            raise ProviderError(exc.what, exc.detail, status=exc.status, transient=exc.transient,
                                retry_after=exc.retry_after) from None
        if not isinstance(reply.value, dict):
            raise ProviderError(f"{self.options.provider}: response body is not a JSON object", status=reply.status)
        return reply.value, reply.latency_ms


class OpenAIClient(HTTPChatClient):
    """OpenAI-compatible ``POST {base_url}/chat/completions``."""

    path = "/chat/completions"

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        return auth_headers(key)

    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict]) -> dict:
        body: dict[str, Any] = {"model": self.options.model,
                                "messages": ([{"role": "system", "content": system}] if system else []) + messages}
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        if json_schema is not None and self.options.json_mode == "schema":
            name = re.sub(r"[^A-Za-z0-9_-]", "_", str(json_schema.get("title") or "answer"))[:64]
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
        elif json_schema is not None and self.options.json_mode == "object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _parse(self, raw: dict) -> tuple[str, dict]:
        try:
            content = raw["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError("openai: response has no choices[0].message", status=200) from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ProviderError("openai: response message has no text content", status=200)
        usage = raw.get("usage") or {}
        return content, {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")}


class AnthropicClient(HTTPChatClient):
    """Anthropic Messages ``POST {base_url}/v1/messages``."""

    path = "/v1/messages"

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION, **auth_headers(key, "x-api-key", prefix="")}

    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict]) -> dict:
        body: dict[str, Any] = {"model": self.options.model, "max_tokens": self.options.max_tokens,
                                "messages": messages}
        if system:
            body["system"] = system
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        return body

    def _parse(self, raw: dict) -> tuple[str, dict]:
        blocks = raw.get("content")
        if not isinstance(blocks, list):
            raise ProviderError("anthropic: response has no content blocks", status=200)
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        usage = raw.get("usage") or {}
        return text, {"input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens")}


_CLIENTS: dict[str, type[HTTPChatClient]] = {"openai": OpenAIClient, "anthropic": AnthropicClient}


def make_client(options: dict[str, Any], *, transport: Optional[httpx.BaseTransport] = None) -> HTTPChatClient:
    """A client for ``options['provider']``; unknown keys are ignored (they belong to the caller).

    Raises ``ConfigError`` for bad options.  ``transport`` is for tests (``httpx.MockTransport``).
    """
    parsed = ClientOptions.parse(options)
    return _CLIENTS[parsed.provider](parsed, transport=transport)
