"""The one policy for JSON over HTTP: what is worth retrying, where keys come from, what an error says.

The model providers and the ``http`` retriever both POST JSON to a service the
user configured.  Without one policy they drifted: different transient statuses,
different key handling, one retry loop capped and one not.  Here:

- transient (a later attempt may cure it): connection failures, timeouts, 408,
  409, 429 and every 5xx except 501 and 505 (those say the request itself is
  wrong);  the rule the OpenAI and Anthropic SDKs retry by;
- a key is read from a named environment variable at call time and never stored;
  configured headers may not carry secrets;
- :func:`post_json` retries transient failures through ``common.backoff``,
  never sooner than a ``Retry-After`` asked, and every error it raises is an
  :class:`HTTPCallError` whose message has the server's own words (a short
  snippet) with the key redacted;
- an error whose body names a request field the caller marked as optional
  (``config_fields``, e.g. ``response_format``) is a *configuration answer*:
  the server is up and says it does not take that field, whatever the status
  (llama-cpp-python answers 500 to a ``json_schema`` it does not know).  It is
  never transient, so nothing backs off or trips a breaker on it, and
  ``config_field`` says which field it was, so the caller can ask differently.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a call is made: start-up of a run that calls no model skips it
    import httpx

from dispatch.common.backoff import DEFAULT_CAP_S, backoff_delay, parse_retry_after
from dispatch.common.text import clip

ERROR_TEXT_LIMIT = 300
ERROR_BODY_LIMIT = 4000  # how much of an error body is kept to recognise a configuration answer
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_SECRET_WORDS = ("token", "secret", "key")


def is_transient_status(status: int) -> bool:
    """Would the same request, sent again later, likely succeed?"""
    return status in (408, 409, 429) or (500 <= status <= 599 and status not in (501, 505))


class HTTPCallError(Exception):
    """A call that did not produce a usable JSON answer; ``transient`` says whether to try again.

    The message is ``what`` (``"openai: HTTP 500"``), then how many attempts it
    took when more than one, then the server's ``detail``.
    """

    def __init__(self, what: str, detail: str = "", *, status: Optional[int] = None, transient: bool = False,
                 retry_after: Optional[float] = None, attempts: int = 1,
                 config_field: Optional[str] = None) -> None:
        self.what, self.detail, self.attempts = what, detail, attempts
        self.status = status
        self.transient = transient
        self.retry_after = retry_after
        self.config_field = config_field  # the request field the server refused (a configuration answer)
        super().__init__(self._message())

    @property
    def configuration(self) -> bool:
        """The server answered that it does not take part of the request: asking again will not help."""
        return self.config_field is not None

    def _message(self) -> str:
        tried = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return self.what + tried + (f": {self.detail}" if self.detail else "")

    def after(self, attempts: int) -> "HTTPCallError":
        """This error, saying it is the last of ``attempts`` attempts."""
        self.attempts = attempts
        self.args = (self._message(),)
        return self


class MissingKey(HTTPCallError):
    """The environment variable that should hold the API key is not set."""


def read_key(env_name: Optional[str], *, required: bool = True) -> Optional[str]:
    """The API key in ``os.environ[env_name]``; ``MissingKey`` if it is required and unset."""
    value = os.environ.get(env_name) if env_name else None
    if not value and required:
        raise MissingKey(f"environment variable {env_name} is not set")
    return value or None


def secret_header(headers: Mapping[str, str]) -> Optional[str]:
    """The first configured header that looks like a credential (those come from the environment)."""
    for name in headers:
        low = name.lower()
        if low in SECRET_HEADERS or any(word in low for word in _SECRET_WORDS):
            return name
    return None


def auth_headers(key: Optional[str], header: str = "authorization", prefix: str = "Bearer ") -> dict[str, str]:
    """``{header: prefix + key}``, or nothing when there is no key (local servers need none)."""
    return {header: prefix + key} if key else {}


def redact(text: str, key: Optional[str]) -> str:
    return text.replace(key, "***") if key else text


def error_text(response: httpx.Response, limit: int = ERROR_TEXT_LIMIT) -> str:
    """The server's own error message when the body has one (``{"error": {"message": ...}}`` or
    ``{"error": "..."}``), else a snippet of the body."""
    try:
        body = response.json()
    except ValueError:
        return clip(response.text, limit) or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return clip(err["message"], limit)
        if isinstance(err, str):
            return clip(err, limit)
        if isinstance(body.get("message"), str) and body["message"]:  # vLLM's {"object": "error", ...}
            return clip(body["message"], limit)
        if isinstance(body.get("detail"), str):  # FastAPI's HTTPException
            return clip(body["detail"], limit)
    return clip(json.dumps(body), limit)


def named_field(response: httpx.Response, fields: tuple[str, ...]) -> Optional[str]:
    """The first of ``fields`` an error body names (its message, its ``param``, a validation
    error's ``loc``): all are somewhere in the body's text."""
    if not fields:
        return None
    text = response.text[:ERROR_BODY_LIMIT]
    return next((name for name in fields if name in text), None)


def retry_after(response: httpx.Response) -> Optional[float]:
    """The response's ``Retry-After`` (seconds or an HTTP date) in seconds from now."""
    return parse_retry_after(response.headers.get("retry-after"))


@dataclass(frozen=True)
class Retry:
    """How :func:`post_json` retries transient failures: ``retries`` more attempts, waiting
    ``backoff_delay(attempt, base_s, cap_s, jitter)`` (Retry-After a floor) between them."""

    retries: int = 0
    base_s: float = 0.2
    cap_s: float = DEFAULT_CAP_S
    jitter: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    rng: Optional[random.Random] = None


@dataclass(frozen=True)
class JSONReply:
    value: Any
    status: int
    latency_ms: float  # of the attempt that answered
    attempts: int


def post_json(client: httpx.Client, url: str, body: Any, *, label: str, headers: Optional[Mapping[str, str]] = None,
              key: Optional[str] = None, retry: Retry = Retry(), config_fields: tuple[str, ...] = ()) -> JSONReply:
    """POST ``body`` as JSON and parse the answer; :class:`HTTPCallError` when there is none.

    ``label`` starts every error message (``"openai"``, ``"POST http://..."``);
    ``key`` is redacted from them.  Non-transient failures are never retried;
    an error naming one of ``config_fields`` is a configuration answer (see above).
    """
    attempt = 0
    while True:
        try:
            return _post_once(client, url, body, label, headers, key, attempt + 1, config_fields)
        except HTTPCallError as exc:
            if not exc.transient or attempt >= retry.retries:
                raise exc.after(attempt + 1)
            retry.sleep(backoff_delay(attempt, retry.base_s, retry.cap_s, retry.jitter, retry.rng, exc.retry_after))
            attempt += 1


def _post_once(client: httpx.Client, url: str, body: Any, label: str, headers: Optional[Mapping[str, str]],
               key: Optional[str], attempt: int, config_fields: tuple[str, ...] = ()) -> JSONReply:
    started = time.perf_counter()
    import httpx

    try:
        response = client.post(url, json=body, headers=dict(headers) if headers else None)
    except httpx.TimeoutException:
        timeout = client.timeout.read or client.timeout.connect
        raise HTTPCallError(f"{label}: timed out" + (f" after {timeout:g}s" if timeout else ""),
                            transient=True) from None
    except httpx.TransportError as exc:
        raise HTTPCallError(f"{label}: connection failed ({type(exc).__name__}: {redact(str(exc), key)})",
                            transient=True) from None
    except httpx.HTTPError as exc:  # redirects, undecodable content: asking again will not help
        raise HTTPCallError(f"{label}: request failed ({type(exc).__name__}: {redact(str(exc), key)})") from None
    latency_ms = (time.perf_counter() - started) * 1000.0
    status = response.status_code
    if status >= 400:
        field = named_field(response, config_fields)
        raise HTTPCallError(f"{label}: HTTP {status}", redact(error_text(response), key), status=status,
                            transient=field is None and is_transient_status(status),
                            retry_after=retry_after(response), config_field=field)
    try:
        value = response.json()
    except ValueError as exc:  # JSONDecodeError, or bytes that are not text
        where = f" at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise HTTPCallError(f"{label}: response body is not JSON (malformed JSON{where})",
                            redact(clip(response.text, 120), key), status=status) from None
    return JSONReply(value=value, status=status, latency_ms=latency_ms, attempts=attempt)
