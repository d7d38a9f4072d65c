"""The redis-py client an embedded run talks to its private ``redis-server`` with: the same commands, leaner.

Why: an embedded no-op task is two Lua scripts (``prepare``, ``finish``) of
about 35 arguments each, and redis-py spends more CPU turning those into the
protocol (``PythonRespSerializer``: an ``Encoder`` call and a bytes join per
argument, about 30 us a script without hiredis) than the unix-socket round
trip costs.  Under the GIL that CPU is the embedded run's ceiling.  Here:

- ``LeanPacker`` writes the same bytes (checked against redis-py's in the
  tests) in one string join when every argument is an ASCII ``str`` or an
  ``int`` (the scheduler's scripts, the backend's GET/SET), else per argument
  with redis-py's own ``Encoder`` for anything unusual, so its errors stay;
  an argument past ``CHUNK_BYTES`` is kept as its own chunk, not copied, and
  a command of many small arguments is cut in buffers of about that size, so
  a large run's ``HSET`` of every payload costs no second copy of itself;
- ``EmbeddedRedis.register_script`` returns one ``Script`` per script text
  and client: a ``DagScheduler`` is built per agent task and registered its
  three scripts (a SHA-1 each) every time.

Nothing else changes: the connection pool, the parser (RESP3 by default, as
in distributed mode), retries and errors are redis-py's.
"""
from __future__ import annotations

import inspect
import threading
from typing import Any

import redis
from redis._parsers.encoders import Encoder
from redis.connection import AbstractConnection

CHUNK_BYTES = 1 << 16  # an argument this large is sent as its own buffer (the state of a large run)


class LeanPacker:
    """redis-py's command packer (``pack(*args) -> list of bytes``), in fewer Python operations."""

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding = encoding
        self.encode = Encoder(encoding, errors, False).encode  # what anything but str/int/bytes goes through

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if type(first) is str and first.split() == [first]:  # a one-word command: nothing to split
            fast = self._ascii(args)
            if fast is not None:
                return fast
        return self._general(args)

    @staticmethod
    def _ascii(args: tuple) -> list[bytes] | None:
        """Every argument an ASCII str (length = its byte length) or a plain int, the whole command small:
        one join and one encode.  None otherwise."""
        out = [f"*{len(args)}\r\n"]
        size = 0
        for arg in args:
            kind = type(arg)
            if kind is str:
                if not arg.isascii():
                    return None
            elif kind is int:
                arg = str(arg)
            else:
                return None
            size += len(arg)
            if size > CHUNK_BYTES:
                return None
            out.append(f"${len(arg)}\r\n{arg}\r\n")
        return ["".join(out).encode("ascii")]

    def _general(self, args: tuple) -> list[bytes]:
        first = args[0]
        # a command given with its literal arguments ("CONFIG GET") is split, as redis-py does
        if isinstance(first, str):
            head: tuple = tuple(first.encode().split())
        elif b" " in first:
            head = tuple(first.split())
        else:
            head = (first,)
        out: list[bytes] = [b"*%d\r\n" % (len(head) + len(args) - 1)]
        chunks: list[bytes] = []
        buffered = 0
        for arg in (*head, *args[1:]):
            kind = type(arg)
            if kind is str:
                arg = arg.encode(self.encoding)
            elif kind is int:
                arg = b"%d" % arg
            elif kind is not bytes:
                arg = self.encode(arg)  # floats as repr, bytearray/memoryview kept, bool and others refused
            size = len(arg)
            if size > CHUNK_BYTES:  # sent as it is: a large value is never copied into a buffer
                out.append(b"$%d\r\n" % size)
                chunks.append(b"".join(out))
                chunks.append(arg)
                out, buffered = [b"\r\n"], 0
            else:
                out.append(b"$%d\r\n%b\r\n" % (size, arg))
                buffered += size
                if buffered > CHUNK_BYTES:  # many small values (a large HSET): buffers of about CHUNK_BYTES
                    chunks.append(b"".join(out))
                    out, buffered = [], 0
        if out:
            chunks.append(b"".join(out))
        return chunks


class EmbeddedRedis(redis.Redis):
    """``redis.Redis`` whose scripts are registered once per text (``Script`` objects are stateless but for
    their SHA, and reload themselves after a ``SCRIPT FLUSH``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scripts: dict[Any, Any] = {}
        self._scripts_lock = threading.Lock()

    def register_script(self, script: Any) -> Any:
        found = self._scripts.get(script)
        if found is None:
            with self._scripts_lock:
                found = self._scripts.get(script)
                if found is None:
                    found = self._scripts[script] = super().register_script(script)
        return found


def unix_socket_client(path: str) -> EmbeddedRedis:
    """A client of the server on the unix socket ``path`` (redis-py's defaults), with the lean packer on
    every connection it makes (redis-py takes a ``command_packer``; without it, its own packer stays)."""
    client = EmbeddedRedis(unix_socket_path=path)
    if "command_packer" in inspect.signature(AbstractConnection.__init__).parameters:
        client.connection_pool.connection_kwargs["command_packer"] = LeanPacker()
    return client
