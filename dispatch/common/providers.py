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
every other JSON-over-HTTP call.

Rate limits and retries, one policy for every model call (``common.ratelimit``):

- each call counts against a provider *name*: the component's ``provider_limit``,
  else ``<provider>:<host>[:<port>]`` of its base URL (``config.provider_limit_name``);
  its ``[providers.<name>]`` limits arrive as the ``provider_limits`` option;
- before each attempt the call waits for a slot in the installed limiter (the
  deployment's, shared by every worker), up to ``max_wait_s``;
- a 429 or 503 with ``Retry-After`` is recorded there, so no caller of that
  provider, on any worker, sends before then; a retry waits for it too;
- the client itself retries transient failures ``retries`` times (default 0) with
  ``common.backoff`` (capped, jittered, Retry-After a floor); after that its
  caller's retry takes over (an agent task's, the quorum's), and the limiter
  still holds it to the Retry-After.  Circuit breakers stay with the callers
  (``common.breaker``, one per endpoint in the quorum).

Structured output (``json_mode``, OpenAI protocol).  "Compatible" servers accept
different ``response_format`` forms, and a refused form is an error, not a
degraded answer: llama-cpp-python answers 500 to ``json_schema``, LM Studio 400
to ``json_object``.  ``json_mode = "auto"`` (the default) therefore negotiates,
strongest form first (``FORMS``):

- ``schema``: ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` (OpenAI,
  Ollama, vLLM, LM Studio);
- ``object_schema``: ``{"type": "json_object", "schema": {...}}`` (llama.cpp, which
  then constrains the output to the schema);
- ``object``: ``{"type": "json_object"}``;
- ``off``: no ``response_format``; the schema is stated in the prompt only.

An error whose body names ``response_format`` is a configuration answer
(``common.http``): the next form is tried at once, with no backoff, and a weaker
form that worked is remembered per endpoint (provider, base URL and model: OpenAI
takes ``json_schema`` for some models only) for the life of the process, and in
``shared_cache`` (any ``get``/``set(key, value, ttl_s)`` store, the quorum's
Redis cache on workers) for a cluster, so each endpoint is negotiated once.  A
fixed ``json_mode`` that the endpoint refuses fails at once (not transient), with
a message pointing at ``"auto"``.  The schema is always stated in the prompt as
well: servers that ignore ``response_format`` exist, and small models follow it.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a call is made: start-up of a run that calls no model skips it
    import httpx
from pydantic import ValidationError

from dispatch.common.backoff import DEFAULT_CAP_S, backoff_delay
from dispatch.common.http import HTTPCallError, MissingKey, auth_headers, post_json, read_key
from dispatch.common.ratelimit import LIMITER, RateLimiter, RateLimitTimeout, acquire, hold_off
from dispatch.config import (DEFAULT_BASE_URLS, LIMIT_NAME, MODEL_PROVIDERS, ProviderLimits, find_inline_secret,
                             format_validation_error, provider_limit_name, resolve_references)
from dispatch.errors import ConfigError

PROVIDERS = MODEL_PROVIDERS
DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
ANTHROPIC_VERSION = "2023-06-01"
FORMS = ("schema", "object_schema", "object", "off")  # strongest first
JSON_MODES = ("auto",) + FORMS
NEGOTIATION_KEY_PREFIX = "structured-output:"
NEGOTIATION_TTL_S = 24 * 3600  # a server upgrade may accept a stronger form: ask again daily
REJECTABLE_FIELD = "response_format"
HOLD_OFF_STATUSES = (429, 503)  # whose Retry-After every caller of the provider honours
RETRY_BASE_S, RETRY_JITTER = 0.5, 0.5  # the client's own retries (``retries``): common.backoff's formula
CHARS_PER_TOKEN = 4  # a request's tokens, estimated before the call; reconciled with its usage after
OUTPUT_ESTIMATE = 512  # output tokens reserved when max_tokens is not set


class ProviderError(HTTPCallError):
    """A model call that did not produce a reply."""


@dataclass
class ChatReply:
    text: str
    latency_ms: float
    raw: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # {"input_tokens": n, "output_tokens": m} when known
    json_mode: Optional[str] = None  # the structured-output form the answer was asked with (``FORMS``)
    cut_off: bool = False  # the answer stopped at max_tokens: JSON in it is likely incomplete

    @property
    def input_tokens(self) -> Optional[int]:
        return _count(self.usage.get("input_tokens"))

    @property
    def output_tokens(self) -> Optional[int]:
        return _count(self.usage.get("output_tokens"))


def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ChatClient(Protocol):
    def complete(self, system: str, messages: list[dict], *,
                 json_schema: Optional[dict] = None) -> ChatReply: ...


class SharedCache(Protocol):
    """A key-value store shared by a cluster (the quorum's ``KeyValueCache``)."""

    def get(self, key: str) -> Optional[dict]: ...

    def set(self, key: str, value: dict, ttl_s: int) -> None: ...


class FormMemory:
    """The structured-output form each endpoint accepted, for this process (thread-safe)."""

    def __init__(self) -> None:
        self._forms: dict[str, str] = {}
        self._lock = threading.Lock()

    def recall(self, endpoint: str, shared: Optional[SharedCache]) -> Optional[str]:
        with self._lock:
            form = self._forms.get(endpoint)
        if form is None and shared is not None:
            try:
                entry = shared.get(negotiation_key(endpoint))
            except Exception:  # noqa: BLE001 - a cache outage costs a negotiation, never the call
                entry = None
            form = entry.get("json_mode") if isinstance(entry, dict) else None
            if form in FORMS:
                with self._lock:
                    self._forms[endpoint] = form
        return form if form in FORMS else None

    def learn(self, endpoint: str, form: str, shared: Optional[SharedCache]) -> None:
        with self._lock:
            self._forms[endpoint] = form
        if shared is not None:
            try:
                shared.set(negotiation_key(endpoint), {"json_mode": form, "endpoint": endpoint}, NEGOTIATION_TTL_S)
            except Exception:  # noqa: BLE001
                pass

    def forget(self) -> None:
        """Forget every endpoint (tests, or after a server changed)."""
        with self._lock:
            self._forms.clear()


NEGOTIATED = FormMemory()


def negotiation_key(endpoint: str) -> str:
    return NEGOTIATION_KEY_PREFIX + hashlib.sha256(endpoint.encode("utf-8")).hexdigest()[:32]


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
    json_mode: str = "auto"
    headers: tuple[tuple[str, str], ...] = ()
    limit_name: str = ""  # the provider the calls count against (``[providers.<name>]``)
    limits: ProviderLimits = field(default_factory=ProviderLimits, compare=False)

    @property
    def lease_s(self) -> float:
        """How long a call's ``max_concurrency`` lease lasts if never given back (its worker was killed):
        past any call's end, as httpx applies ``timeout_s`` to connecting and to each read."""
        return 2 * self.timeout_s + 10.0

    @property
    def endpoint(self) -> str:
        """What a negotiated form is remembered by (no secret in it)."""
        return f"{self.provider} {self.base_url} {self.model}"

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
        literal = find_inline_secret({"headers": headers})
        if literal is not None:  # a ``${NAME}`` reference is resolved on the worker at call time instead
            raise ConfigError(f"headers: credentials come from the environment (api_key_env, or a "
                              f"\"${{NAME}}\" reference in the header's value), not literally: {literal}")
        json_mode = options.get("json_mode", "auto")
        if json_mode not in JSON_MODES:
            raise ConfigError(f"json_mode: must be one of {', '.join(JSON_MODES)} (got {json_mode!r})")
        limit_name = options.get("provider_limit") or provider_limit_name(provider, base_url)
        if not isinstance(limit_name, str) or not LIMIT_NAME.match(limit_name):
            raise ConfigError(f"provider_limit: must be the name of a [providers.<name>] table (got {limit_name!r})")
        try:  # put there by DispatchConfig from [providers.<name>]
            limits = ProviderLimits.model_validate(options.get("provider_limits") or {})
        except ValidationError as exc:
            raise ConfigError(f"provider_limits: {format_validation_error(exc)}") from None
        return cls(
            provider=provider, model=model.strip(), base_url=base_url.rstrip("/"),
            api_key_env=key_env or (None if key_env == "" else DEFAULT_KEY_ENVS[provider]),
            api_key_required=bool(key_env),
            timeout_s=_number(options, "timeout_s", 30.0, positive=True),
            temperature=_number(options, "temperature", None),
            max_tokens=_integer(options, "max_tokens", 1024 if provider == "anthropic" else None),
            json_mode=json_mode, headers=tuple(sorted(headers.items())), limit_name=limit_name, limits=limits)


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
    """Shared plumbing: one pooled ``httpx.Client``, timing, error classification, form negotiation."""

    path = ""
    takes_response_format = False  # the protocol has OpenAI's ``response_format``

    def __init__(self, options: ClientOptions, transport: Optional[httpx.BaseTransport] = None,
                 shared_cache: Optional[SharedCache] = None, memory: FormMemory = NEGOTIATED,
                 limiter: Optional[RateLimiter] = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.shared_cache = shared_cache  # may be set later (the quorum attaches its cache)
        self.memory = memory
        self.limiter = limiter  # None: the process's installed one (``common.ratelimit.LIMITER``), at call time
        self.sleep = sleep
        import httpx

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
        negotiating = json_schema is not None and self.takes_response_format and self.options.json_mode == "auto"
        known = self.memory.recall(self.options.endpoint, self.shared_cache) if negotiating else None
        forms = self.forms_to_try(known) if json_schema is not None else [None]
        for form in forms:
            try:
                raw, latency_ms = self._post(self._body(system, messages, json_schema, form), key,
                                             config_fields=(REJECTABLE_FIELD,) if form not in (None, "off") else ())
                break
            except ProviderError as exc:
                if not exc.configuration:
                    raise
                if not negotiating:
                    raise self._refused(exc, form) from None
                # A configuration answer: the next form, at once.  The last ("off") sends no
                # response_format, so a negotiation ends in an answer or in a real error.
        if negotiating and form != (known or FORMS[0]):  # the strongest form needs no memory
            self.memory.learn(self.options.endpoint, form, self.shared_cache)
        text, usage = self._parse(raw)
        return ChatReply(text=text, latency_ms=latency_ms, raw=raw, usage=usage, json_mode=form,
                         cut_off=self._cut_off(raw))

    def forms_to_try(self, known: Optional[str] = None) -> list[str]:
        """The structured-output forms to ask with, in order: from the one the endpoint is known to
        accept (``known``) downwards, else all of them (see the module docstring)."""
        if not self.takes_response_format:
            return ["off"]
        if self.options.json_mode != "auto":
            return [self.options.json_mode]
        return list(FORMS[FORMS.index(known):]) if known in FORMS else list(FORMS)

    def _refused(self, exc: ProviderError, form: Optional[str]) -> ProviderError:
        """A fixed ``json_mode`` the endpoint refuses: not transient, and the way out in the message."""
        hint = f"json_mode = \"{form}\" is refused by this endpoint; json_mode = \"auto\" finds a form it accepts"
        return ProviderError(exc.what, (exc.detail + f" ({hint})").strip(), status=exc.status,
                             config_field=exc.config_field)

    # -- per protocol
    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict], form: Optional[str]) -> dict:
        raise NotImplementedError

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        raise NotImplementedError

    def _parse(self, raw: dict) -> tuple[str, dict]:
        raise NotImplementedError

    def _cut_off(self, raw: dict) -> bool:
        raise NotImplementedError

    # -- shared
    def _api_key(self) -> Optional[str]:
        try:
            return read_key(self.options.api_key_env, required=self.options.api_key_required)
        except MissingKey as exc:
            raise ProviderError(f"{self.options.provider}: {exc}") from None

    def _post(self, body: dict, key: Optional[str], config_fields: tuple[str, ...] = ()) -> tuple[dict, float]:
        try:  # ``${NAME}`` references resolved here, on the worker, at call time: never stored resolved
            configured = {name: resolve_references(value, where=f"headers.{name}")
                          for name, value in self.options.headers}
            base_url = resolve_references(self.options.base_url, where="base_url")
        except (KeyError, ValueError) as exc:
            raise ProviderError(f"{self.options.provider}: {exc}") from None
        headers = {"content-type": "application/json", **configured, **self._auth_headers(key)}
        secrets = [v for name, v in configured.items() if v != dict(self.options.headers).get(name)]
        options, limits = self.options, self.options.limits
        limiter = self.limiter or LIMITER.current()
        reserved = self._estimate_tokens(body)
        attempt = 0
        while True:
            try:
                slot = acquire(limiter, options.limit_name, limits, reserved, options.lease_s, sleep=self.sleep)
            except RateLimitTimeout as exc:
                raise ProviderError(f"{options.provider}: {exc}", transient=True,
                                    retry_after=exc.wait_s).after(attempt + 1) from None
            try:
                reply = post_json(self._http, base_url + self.path, body, label=options.provider,
                                  headers=headers, key=key, config_fields=config_fields)
            except HTTPCallError as exc:
                if exc.status in HOLD_OFF_STATUSES and exc.retry_after:  # before the lease goes: no one slips in
                    hold_off(limiter, options.limit_name, exc.retry_after)
                # an HTTP error used no tokens; a timeout or a lost connection may have: the reservation stands
                slot.release(0 if exc.status is not None else None)
                if not exc.transient or attempt >= limits.retries or (exc.retry_after or 0) > limits.max_wait_s:
                    detail = exc.detail
                    for value in secrets:
                        detail = detail.replace(value, "***")
                    raise ProviderError(exc.what, detail, status=exc.status, transient=exc.transient,
                                        retry_after=exc.retry_after, config_field=exc.config_field,
                                        attempts=attempt + 1) from None
                self.sleep(backoff_delay(attempt, RETRY_BASE_S, DEFAULT_CAP_S, RETRY_JITTER,
                                         retry_after_s=exc.retry_after))
                attempt += 1
                continue
            except BaseException:  # interrupted (a soft time limit): the lease goes back now, not when it lapses
                slot.release(None)
                raise
            slot.release(self._used_tokens(reply.value))
            break
        if not isinstance(reply.value, dict):
            raise ProviderError(f"{options.provider}: response body is not a JSON object", status=reply.status)
        return reply.value, reply.latency_ms

    def _estimate_tokens(self, body: dict) -> int:
        """What a call reserves against ``tokens_per_minute``: its request's length, plus its answer's cap."""
        if not self.options.limits.tokens_per_minute:
            return 0
        size = len(json.dumps(body, separators=(",", ":")))
        return math.ceil(size / CHARS_PER_TOKEN) + (self.options.max_tokens or OUTPUT_ESTIMATE)

    def _used_tokens(self, raw: Any) -> Optional[int]:
        """The tokens an answer reports it used (input + output), None when it does not say."""
        try:
            _, usage = self._parse(raw)
        except Exception:  # noqa: BLE001 - a malformed answer is reported by complete(); here it says nothing
            return None
        counts = [_count(usage.get("input_tokens")), _count(usage.get("output_tokens"))]
        return None if None in counts else sum(counts)


class OpenAIClient(HTTPChatClient):
    """OpenAI-compatible ``POST {base_url}/chat/completions``."""

    path = "/chat/completions"
    takes_response_format = True

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        return auth_headers(key)

    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict], form: Optional[str]) -> dict:
        body: dict[str, Any] = {"model": self.options.model,
                                "messages": ([{"role": "system", "content": system}] if system else []) + messages}
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        if json_schema is not None and form == "schema":
            name = re.sub(r"[^A-Za-z0-9_-]", "_", str(json_schema.get("title") or "answer"))[:64]
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
        elif json_schema is not None and form == "object_schema":
            body["response_format"] = {"type": "json_object", "schema": json_schema}
        elif json_schema is not None and form == "object":
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

    def _cut_off(self, raw: dict) -> bool:
        return raw["choices"][0].get("finish_reason") == "length"


class AnthropicClient(HTTPChatClient):
    """Anthropic Messages ``POST {base_url}/v1/messages``."""

    path = "/v1/messages"

    def _auth_headers(self, key: Optional[str]) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION, **auth_headers(key, "x-api-key", prefix="")}

    def _body(self, system: str, messages: list[dict], json_schema: Optional[dict], form: Optional[str]) -> dict:
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

    def _cut_off(self, raw: dict) -> bool:
        return raw.get("stop_reason") == "max_tokens"


_CLIENTS: dict[str, type[HTTPChatClient]] = {"openai": OpenAIClient, "anthropic": AnthropicClient}


def make_client(options: dict[str, Any], *, transport: Optional[httpx.BaseTransport] = None,
                shared_cache: Optional[SharedCache] = None, limiter: Optional[RateLimiter] = None) -> HTTPChatClient:
    """A client for ``options['provider']``; unknown keys are ignored (they belong to the caller).

    Raises ``ConfigError`` for bad options.  ``transport`` is for tests (``httpx.MockTransport``);
    ``shared_cache`` shares negotiated structured-output forms across processes; ``limiter``
    overrides the process's installed rate limiter (``common.ratelimit.LIMITER``).
    """
    parsed = ClientOptions.parse(options)
    return _CLIENTS[parsed.provider](parsed, transport=transport, shared_cache=shared_cache, limiter=limiter)
