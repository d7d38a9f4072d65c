"""Vote cache: the same question to the same validator need not be paid for twice.

A vote is stored under a hash of everything it depends on: the user prompt, the
breakdown, and the validator's configuration (name, kind, weight, options,
prompt version).  Nothing secret is part of the key or the value: options name
the environment variable that holds a key, never the key.  The store is any
``KeyValueCache``: ``MemoryCache`` in process, a Redis-backed one in the state
store for sharing across workers.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any, Callable, Optional, Protocol

from dispatch.models import DispatchInput

KEY_PREFIX = "quorum:vote:"
KEY_VERSION = 1


class KeyValueCache(Protocol):
    def get(self, key: str) -> Optional[dict]: ...

    def set(self, key: str, value: dict, ttl_s: int) -> None: ...


class MemoryCache:
    """A thread-safe in-process ``KeyValueCache`` with per-entry expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._items: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[dict]:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            expires, value = entry
            if self.clock() >= expires:
                del self._items[key]
                return None
            return json.loads(json.dumps(value))  # a copy: callers must not share our dict

    def set(self, key: str, value: dict, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._items[key] = (self.clock() + ttl_s, json.loads(json.dumps(value)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def vote_key(request: DispatchInput, fingerprint: dict[str, Any]) -> str:
    """``quorum:vote:<sha256>`` of the prompt, the breakdown and the validator's fingerprint."""
    document = {
        "v": KEY_VERSION,
        "prompt": request.user_prompt,
        "tasks": [t.model_dump(mode="json") for t in request.tasks],
        "validator": fingerprint,
    }
    blob = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return KEY_PREFIX + hashlib.sha256(blob.encode("utf-8")).hexdigest()
