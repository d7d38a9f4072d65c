"""The embedded client's lean packer writes exactly redis-py's bytes, and its scripts are registered once."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from redis.exceptions import DataError

from dispatch.runtime.embedded_client import CHUNK_BYTES, LeanPacker


def redis_py(*args):
    return b"".join(PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack(*args))


def lean(*args):
    return b"".join(LeanPacker().pack(*args))


ARG = st.one_of(st.text(max_size=40), st.binary(max_size=40), st.integers(), st.floats(allow_nan=False),
                st.sampled_from(["dispatch:dag:run:ready", "é", "", " ", "a b"]))


@settings(max_examples=400, deadline=None)
@given(command=st.one_of(st.sampled_from(["EVALSHA", "GET", "CONFIG GET", b"HSET", b"CLIENT SETINFO", "GET\tx"]),
                         st.text(min_size=1, max_size=12)),
       args=st.lists(ARG, max_size=12))
def test_the_same_bytes_as_redis_py(command, args):
    assert lean(command, *args) == redis_py(command, *args)


def test_the_scheduler_script_shape_and_large_values():
    keys = [f"dispatch:dag:20261201-run:{name}" for name in ("results", "dependents", "remaining", "ready")]
    args = ("EVALSHA", "a" * 40, len(keys), *keys, "t1", '{"output": "x"}', "1", 604800, 0.25, "sleep")
    assert lean(*args) == redis_py(*args)
    big = "x" * (CHUNK_BYTES + 1)
    chunks = LeanPacker().pack("SET", "state", big, b"\xff" * (CHUNK_BYTES + 5), memoryview(b"mv"))
    assert b"".join(chunks) == redis_py("SET", "state", big, b"\xff" * (CHUNK_BYTES + 5), memoryview(b"mv"))
    assert any(len(c) > CHUNK_BYTES for c in chunks) and len(chunks) > 1  # large values are not copied in
    many = ["HSET", "payloads"] + [f"t{i}" if i % 2 else "p" * 300 for i in range(2000)]
    chunks = LeanPacker().pack(*many)
    assert b"".join(chunks) == redis_py(*many)
    assert len(chunks) > 1 and max(len(c) for c in chunks) < 2 * CHUNK_BYTES  # cut in buffers, not one copy


def test_what_redis_py_refuses_is_refused():
    for bad in (True, None, object(), [1]):
        with pytest.raises(DataError):
            LeanPacker().pack("SET", "k", bad)


PROBE = r"""
from dispatch.runtime.embedded_server import embedded_server, PrivateRedis
server = embedded_server()
assert isinstance(server, PrivateRedis), type(server)
client = server.client()
text = "return {KEYS[1], ARGV[1], #ARGV}"
script = client.register_script(text)
assert client.register_script(text) is script  # one Script per text and client
assert script(keys=["k é"], args=["v", 3, 0.5, b"\x00"]) == [b"k \xc3\xa9", b"v", 4]
client.script_flush()
assert script(keys=["k"], args=["again"]) == [b"k", b"again", 1]  # reloaded after a flush
client.set("big", "y" * 200_000)
assert len(client.get("big")) == 200_000
print("ok")
"""


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server binary")
def test_a_live_round_trip_through_the_private_server():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
