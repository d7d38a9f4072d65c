"""``dispatch.common``: backoff, breaker, graph faults, HTTP policy and text helpers, offline."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from dispatch.common.backoff import backoff_delay, parse_retry_after
from dispatch.common.breaker import CLOSED, HALF_OPEN, OPEN, BreakerBoard, CircuitBreaker, CircuitOpen
from dispatch.common.graph import find_cycles, graph_faults
from dispatch.common.http import (HTTPCallError, MissingKey, Retry, is_transient_status, post_json, read_key,
                                  secret_header)
from dispatch.common.text import as_text, clip, one_line, terms, text_table, truncate, words


# ------------------------------------------------------------------ backoff
def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(k, 0.5, cap_s=3.0) for k in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(10_000, 1.0, cap_s=7.0) == 7.0  # no overflow on a huge attempt
    assert backoff_delay(-3, 0.5) == 0.5 and backoff_delay(2, 0.0) == 0.0


def test_backoff_jitter_stays_within_its_share_and_is_reproducible():
    delays = [backoff_delay(2, 1.0, cap_s=10.0, jitter=0.25, rng=random.Random(seed)) for seed in range(200)]
    assert all(3.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 50
    assert backoff_delay(2, 1.0, jitter=0.25, rng=random.Random(9)) == backoff_delay(2, 1.0, jitter=0.25,
                                                                                    rng=random.Random(9))
    assert all(0.0 <= backoff_delay(1, 1.0, jitter=5.0, rng=random.Random(s)) <= 2.0 for s in range(50))  # clamped


def test_retry_after_is_a_floor_even_above_the_cap():
    assert backoff_delay(0, 0.5, cap_s=3.0, retry_after_s=2.0) == 2.0
    assert backoff_delay(3, 0.5, cap_s=3.0, retry_after_s=1.0) == 3.0  # a smaller Retry-After changes nothing
    assert backoff_delay(0, 0.5, cap_s=3.0, retry_after_s=60.0) == 60.0
    assert backoff_delay(0, 1.0, jitter=1.0, rng=random.Random(1), retry_after_s=0.9) >= 0.9


def test_parse_retry_after_reads_seconds_and_http_dates():
    now = datetime(2025, 10, 7, 16, 30, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0 and parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now=now) == 42.0
    assert parse_retry_after("Tue, 07 Oct 2025 16:29:00 GMT", now=now) == 0.0  # in the past: no wait
    assert parse_retry_after("-5") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


# ------------------------------------------------------------------ breaker
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_refuses_with_a_reason_and_lets_one_trial_through():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock)
    breaker.record_failure()
    breaker.before_call()  # one failure is not enough
    breaker.record_failure()
    assert breaker.state == OPEN
    with pytest.raises(CircuitOpen, match=r"circuit open after 2 consecutive failures; next try in 10\.0s"):
        breaker.before_call()
    clock.now += 10
    assert breaker.state == HALF_OPEN and breaker.allow()
    with pytest.raises(CircuitOpen, match="trial call is already running"):
        breaker.before_call()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.failures == 0


def test_board_shares_a_breaker_per_key_and_follows_new_settings():
    clock = Clock()
    board = BreakerBoard(clock=clock)
    first = board.get("svc", 1, 5)
    first.record_failure()
    again = board.get("svc", 3, 60)
    assert again is first and again.state == OPEN  # what it learned is kept
    assert (again.failure_threshold, again.cooldown_s) == (3, 60.0)
    assert board.peek("other") is None
    board.reset()
    assert board.peek("svc") is None


# ------------------------------------------------------------------- graph
def test_graph_faults_are_typed_with_their_paths():
    faults = graph_faults([("a", ["b"]), ("b", ["a"]), ("c", ["c", "x", "x"]), ("a", [])])
    assert [f.kind for f in faults] == ["duplicate_id", "self_dependency", "unknown_dependency", "cycle"]
    assert [str(f) for f in faults] == [
        "tasks[3].task_id: duplicate id 'a' (first at tasks[0])",
        "tasks[2].dependencies: task 'c' depends on itself",
        "tasks[2].dependencies: unknown task 'x'",
        "tasks: dependency cycle (a -> b: a depends on b): a -> b -> a",
    ]
    assert faults[-1].path == "tasks" and faults[-1].members == ("a", "b")
    assert graph_faults([("a", []), ("b", ["a"])]) == []


def test_find_cycles_reports_each_cycle_once_without_recursion():
    assert find_cycles([("a", ["b"]), ("b", ["c"]), ("c", ["a"]), ("d", ["d"])]) == [["a", "b", "c"]]
    chain = [(f"t{i}", [f"t{i + 1}"]) for i in range(5000)] + [("t5000", ["t0"])]
    [cycle] = find_cycles(chain)
    assert len(cycle) == 5001


# -------------------------------------------------------------------- http
def _client(*responses: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handler), timeout=2.0), seen


def test_transient_statuses():
    assert all(is_transient_status(s) for s in (408, 409, 429, 500, 502, 503, 504, 529))
    assert not any(is_transient_status(s) for s in (400, 401, 403, 404, 422, 501, 505))


def test_post_json_retries_transient_failures_honouring_retry_after():
    sleeps: list[float] = []
    client, seen = _client(httpx.Response(503, headers={"retry-after": "2"}, json={"error": "busy"}),
                           httpx.Response(500, json={"error": {"message": "boom"}}),
                           httpx.Response(200, json={"ok": True}))
    reply = post_json(client, "http://svc.invalid/q", {"q": 1}, label="svc",
                      retry=Retry(retries=2, base_s=0.1, cap_s=1.0, sleep=sleeps.append))
    assert reply.value == {"ok": True} and reply.attempts == 3 and len(seen) == 3
    assert sleeps == [2.0, 0.2]  # Retry-After floors the first wait; the second is base * 2


def test_post_json_gives_up_with_the_servers_words_and_the_key_redacted():
    client, seen = _client(*[httpx.Response(502, json={"error": "bad gateway for sk-123"})] * 2)
    with pytest.raises(HTTPCallError) as info:
        post_json(client, "http://svc.invalid/q", {}, label="POST svc", key="sk-123",
                  retry=Retry(retries=1, base_s=0.0, sleep=lambda s: None))
    assert str(info.value) == "POST svc: HTTP 502 (after 2 attempts): bad gateway for ***"
    assert info.value.transient and info.value.status == 502 and len(seen) == 2


def test_post_json_does_not_retry_what_asking_again_cannot_fix():
    client, seen = _client(httpx.Response(200, text="<html>"), httpx.Response(404, json={"error": "no"}))
    with pytest.raises(HTTPCallError, match=r"svc: response body is not JSON \(malformed JSON at char 0\): <html>"):
        post_json(client, "http://svc.invalid/q", {}, label="svc", retry=Retry(retries=3, sleep=lambda s: None))
    with pytest.raises(HTTPCallError, match="svc: HTTP 404: no$") as info:
        post_json(client, "http://svc.invalid/q", {}, label="svc", retry=Retry(retries=3, sleep=lambda s: None))
    assert not info.value.transient and len(seen) == 2


def test_keys_come_from_the_environment_and_never_from_headers(monkeypatch):
    monkeypatch.setenv("COMMON_TEST_KEY", "k")
    monkeypatch.delenv("COMMON_TEST_UNSET", raising=False)
    assert read_key("COMMON_TEST_KEY") == "k"
    assert read_key("COMMON_TEST_UNSET", required=False) is None and read_key(None, required=False) is None
    with pytest.raises(MissingKey, match="environment variable COMMON_TEST_UNSET is not set"):
        read_key("COMMON_TEST_UNSET")
    assert secret_header({"X-Team": "a", "X-Auth-Token": "b"}) == "X-Auth-Token"
    assert secret_header({"x-api-key": "b"}) == "x-api-key" and secret_header({"X-Team": "a"}) is None


# -------------------------------------------------------------------- text
def test_as_text_decodes_bytes_and_passes_text():
    assert as_text(b"caf\xc3\xa9") == "café" and as_text(bytearray(b"x")) == "x" and as_text("s") == "s"
    assert as_text(None) is None and as_text(b"\xff") == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        as_text(b"\xff", errors="strict")


def test_clip_one_line_and_truncate():
    assert clip("a  b\nc", 10) == "a b c" and clip("x" * 20, 10) == "x" * 9 + "…" and len(clip("y" * 50, 10)) == 10
    assert one_line("first\x1b[0m\nsecond") == "first[0m …" and one_line(None) == ""
    assert truncate("short", 10) == "short"
    assert truncate("x" * 30, 10) == "x" * 10 + "... [20 more chars]"
    cut = truncate("HEAD" + "x" * 100 + "TAIL", 30, keep_tail=True)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and "[78 chars truncated]" in cut


def test_text_table_aligns_clips_and_fits_the_width():
    lines = text_table(["name", "n"], [["a", "10"], ["bbb", "2"]], right=[1])
    assert lines == ["  name   n", "  a     10", "  bbb    2"]
    lines = text_table(["id", "note"], [["x" * 50, "y" * 200]], rule=True, width=60, cell_limit=10)
    assert lines[1].strip().startswith("----------  ----") and all(len(line) <= 60 for line in lines)
    assert lines[2].split()[0] == "x" * 9 + "…" and lines[2].endswith("…")


def test_words_and_terms():
    assert words("GlobalContext gather_context") == ["globalcontext", "global", "context", "gather", "context"]
    assert words("UserAuthentication PostgreSQL", whole=False, unsplit={"postgresql"}) == [
        "user", "authentication", "postgresql"]
    assert words("GlobalContext x", parts=False) == ["globalcontext", "x"]
    assert terms("the GlobalContext of the global context", limit=2) == ["globalcontext", "global"]
