"""A generic retrieval service over HTTP, so a team's existing RAG service plugs in.

The contract is deliberately small: ``POST url`` with ``{"query": ..., "top_k": ...}``
answers ``{"items": [{"content": ..., "source": ..., "score": ..., ...}]}``.  An
item may also carry ``id``, ``path``, ``start`` and ``end``; with a path and a
line range its id becomes ``path:start-end`` so it deduplicates against the
workspace index.  Other keys are kept in ``metadata``.

Options: ``url`` (required), ``top_k``, ``timeout_s`` (5), ``retries`` (2),
``backoff_s`` (0.2, doubled each retry), ``backoff_cap_s`` (30),
``breaker_failures`` (3), ``breaker_cooldown_s`` (30), ``headers``
(non-secret), ``api_key_env`` (name of the environment variable holding the
key), ``api_key_header`` (``Authorization``) and ``api_key_prefix`` (``"Bearer "``).

What is retried, how long to wait (a ``Retry-After`` included) and how errors
read is ``common.http``'s policy, shared with the model providers: transient
failures (connection errors, timeouts, 429, most 5xx) are retried, other 4xx
and malformed answers are not (asking again will not fix them).  Each query
that fails after its retries counts once towards the circuit breaker
(``common.breaker``, shared per service by the process).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # imported when a retriever is prepared: a run without one never loads it
    import httpx

from dispatch.common.breaker import BREAKERS, CircuitBreaker
from dispatch.common.http import HTTPCallError, MissingKey, Retry, auth_headers, post_json, read_key, secret_header
from dispatch.errors import ConfigError
from dispatch.models import ContextItem
from dispatch.context.tokens import count_tokens
from dispatch.context.retrievers.base import RETRIEVERS, Retriever


class RetrievalServiceError(Exception):
    """The service could not give a usable answer for one query."""


@RETRIEVERS.register("http")
class HttpRetriever(Retriever):
    client: Optional[httpx.Client] = None
    breaker: Optional[CircuitBreaker] = None
    key: Optional[str] = None  # only to redact it from error messages; it travels in the client's headers

    def prepare(self) -> None:
        self.url = self.option("url", None)
        if not self.url:
            raise ConfigError(f"retrievers.{self.name}.url: required for an http retriever")
        self.timeout_s = self.option("timeout_s", 5.0, float)
        self.retry = Retry(retries=max(0, self.option("retries", 2, int)),
                           base_s=max(0.0, self.option("backoff_s", 0.2, float)),
                           cap_s=max(0.0, self.option("backoff_cap_s", 30.0, float)))
        headers = {str(k): str(v) for k, v in (self.options.get("headers") or {}).items()}
        secret = secret_header(headers)
        if secret is not None:
            raise ConfigError(f"retrievers.{self.name}.headers.{secret}: secrets are read from the "
                              f"environment; use api_key_env (and api_key_header) instead")
        key_env = self.options.get("api_key_env")
        if key_env:
            try:
                self.key = read_key(str(key_env))
            except MissingKey as exc:
                raise RetrievalServiceError(f"{exc} (api_key_env)") from None
            headers.update(auth_headers(self.key, self.option("api_key_header", "Authorization"),
                                        self.option("api_key_prefix", "Bearer ")))
        if self.breaker is None:
            self.breaker = BREAKERS.get(f"{self.name}|{self.url}", self.option("breaker_failures", 3, int),
                                        self.option("breaker_cooldown_s", 30.0, float))
        import httpx

        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), headers=headers)

    def search(self, query: str, top_k: int) -> list[ContextItem]:
        assert self.client is not None and self.breaker is not None, "prepare() first"
        self.breaker.before_call()
        try:
            try:
                reply = post_json(self.client, self.url, {"query": query, "top_k": top_k},
                                  label=f"POST {self.url}", key=self.key, retry=self.retry)
            except HTTPCallError as exc:
                raise RetrievalServiceError(str(exc)) from None
            items = self._parse(reply.value, query, top_k)
        except RetrievalServiceError:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return items

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
