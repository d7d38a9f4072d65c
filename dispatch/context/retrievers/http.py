"""A generic retrieval service over HTTP, so a team's existing RAG service plugs in.

The contract is deliberately small: ``POST url`` with ``{"query": ..., "top_k": ...}``
answers ``{"items": [{"content": ..., "source": ..., "score": ..., ...}]}``.  An
item may also carry ``id``, ``path``, ``start`` and ``end``; with a path and a
line range its id becomes ``path:start-end`` so it deduplicates against the
workspace index.  Other keys are kept in ``metadata``.

Options: ``url`` (required), ``top_k``, ``timeout_s`` (5), ``retries`` (2),
``backoff_s`` (0.2, doubled each retry), ``breaker_failures`` (3),
``breaker_cooldown_s`` (30), ``headers`` (non-secret), ``api_key_env`` (name of
the environment variable holding the key), ``api_key_header``
(``Authorization``) and ``api_key_prefix`` (``"Bearer "``).

Retried: connection errors, timeouts, 429 and 5xx.  Not retried: other 4xx and
malformed answers (asking again will not fix them).  Each query that fails
after its retries counts once towards the circuit breaker.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Optional

import httpx

from dispatch.errors import ConfigError
from dispatch.models import ContextItem
from dispatch.context.breaker import CircuitBreaker, breaker_for
from dispatch.context.tokens import count_tokens
from dispatch.context.retrievers.base import RETRIEVERS, Retriever

RETRY_STATUS = {429, 500, 502, 503, 504}
SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie"}


class RetrievalServiceError(Exception):
    """The service could not give a usable answer for one query."""


class _Retryable(RetrievalServiceError):
    pass


@RETRIEVERS.register("http")
class HttpRetriever(Retriever):
    client: Optional[httpx.Client] = None
    breaker: Optional[CircuitBreaker] = None

    def prepare(self) -> None:
        self.url = self.option("url", None)
        if not self.url:
            raise ConfigError(f"retrievers.{self.name}.url: required for an http retriever")
        self.timeout_s = self.option("timeout_s", 5.0, float)
        self.retries = max(0, self.option("retries", 2, int))
        self.backoff_s = max(0.0, self.option("backoff_s", 0.2, float))
        headers = {str(k): str(v) for k, v in (self.options.get("headers") or {}).items()}
        for header in headers:
            if header.lower() in SECRET_HEADERS or any(w in header.lower() for w in ("token", "secret", "key")):
                raise ConfigError(f"retrievers.{self.name}.headers.{header}: secrets are read from the "
                                  f"environment; use api_key_env (and api_key_header) instead")
        key_env = self.options.get("api_key_env")
        if key_env:
            key = os.environ.get(str(key_env))
            if not key:
                raise RetrievalServiceError(f"environment variable {key_env} (api_key_env) is not set")
            header = self.option("api_key_header", "Authorization")
            headers[header] = self.option("api_key_prefix", "Bearer ") + key
        if self.breaker is None:
            self.breaker = breaker_for(f"{self.name}|{self.url}", self.option("breaker_failures", 3, int),
                                       self.option("breaker_cooldown_s", 30.0, float))
        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), headers=headers)

    def search(self, query: str, top_k: int) -> list[ContextItem]:
        assert self.client is not None and self.breaker is not None, "prepare() first"
        self.breaker.before_call()
        try:
            payload = self._post_with_retries({"query": query, "top_k": top_k})
            items = self._parse(payload, query, top_k)
        except RetrievalServiceError:
            self.breaker.failure()
            raise
        self.breaker.success()
        return items

    def _post_with_retries(self, body: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            try:
                return self._post(body)
            except _Retryable as exc:
                if attempt >= self.retries:
                    raise RetrievalServiceError(f"{exc} (after {attempt + 1} attempts)") from None
                time.sleep(self.backoff_s * (2 ** attempt))
                attempt += 1

    def _post(self, body: dict[str, Any]) -> Any:
        assert self.client is not None
        try:
            response = self.client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"POST {self.url}: timed out after {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise _Retryable(f"POST {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"POST {self.url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise RetrievalServiceError(f"POST {self.url}: HTTP {response.status_code}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RetrievalServiceError(f"POST {self.url}: malformed JSON ({exc})") from None

    def _parse(self, payload: Any, query: str, top_k: int) -> list[ContextItem]:
        raw = payload.get("items", payload.get("results")) if isinstance(payload, dict) else payload
        if not isinstance(raw, list):
            raise RetrievalServiceError(f"POST {self.url}: answer has no 'items' list")
        items = []
        for entry in raw[:top_k]:
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                continue  # one bad item does not spoil the answer
            items.append(self._item(entry, query))
        return items

    def _item(self, entry: dict[str, Any], query: str) -> ContextItem:
        content = entry["content"]
        source = str(entry.get("source") or entry.get("path") or self.url)
        meta = {k: v for k, v in entry.items() if k not in ("content", "source", "score", "id")}
        path, start, end = entry.get("path") or entry.get("source"), entry.get("start"), entry.get("end")
        if isinstance(start, int) and isinstance(end, int) and isinstance(path, str) and start <= end:
            item_id = f"{path}:{start}-{end}"
            meta.update(path=path, start=start, end=end)
        else:
            digest = hashlib.blake2b(content.encode(), digest_size=6).hexdigest()
            item_id = str(entry.get("id") or f"{source}#{digest}")
        try:
            score = float(entry.get("score", 0.0))
        except (TypeError, ValueError):
            score = 0.0
        return ContextItem(id=item_id, source=source, content=content, score=score,
                           tokens=count_tokens(content), query=query, kind=str(entry.get("kind", "doc")),
                           retriever=self.name, metadata=meta)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
