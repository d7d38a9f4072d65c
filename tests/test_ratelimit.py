"""Provider rate limits: the limiter scripts on a real private redis-server (and on the embedded
fakeredis), the waiting loop, the ``[providers]`` config, and the model client honouring them."""
from __future__ import annotations

import json
import logging
import threading
import time

import fakeredis
import pytest
import redis
from llm_server import Reply, answer_text, llm_server  # noqa: F401

from dispatch.common.ratelimit import (LIMITER, Decision, RateLimitTimeout, Unlimited, acquire, hold_off)
from dispatch.common.providers import ProviderError, make_client
from dispatch.config import DispatchConfig, ProviderLimits, provider_limit_name
from dispatch.errors import ConfigError
from dispatch.store.keys import Keys
from dispatch.store.limiter import RedisLimiter

PREFIX = "rl-test"


@pytest.fixture(params=["redis", "embedded"])
def client(request):
    if request.param == "embedded":
        yield fakeredis.FakeRedis()
        return
    server = request.getfixturevalue("redis_server")
    yield redis.Redis.from_url(server.url)


@pytest.fixture
def limiter(client):
    return RedisLimiter(client, Keys(PREFIX))


def limits(**kw) -> ProviderLimits:
    return ProviderLimits(**kw)


def take(limiter, lim, name="p", tokens=0, lease_s=30.0, lease_id="a"):
    return limiter.try_acquire(name, lim, tokens, lease_id, lease_s)


# ------------------------------------------------------------------ the scripts
def test_requests_per_minute_spaces_calls_evenly(limiter):
    lim = limits(requests_per_minute=600)  # one per 100 ms
    assert take(limiter, lim).granted
    refused = take(limiter, lim)
    assert not refused.granted and refused.reason == "requests_per_minute"
    assert 0 < refused.wait_s <= 0.1
    time.sleep(refused.wait_s + 0.005)
    assert take(limiter, lim).granted


def test_tokens_per_minute_reserves_then_reconciles(limiter):
    lim = limits(tokens_per_minute=60_000)  # one token per ms
    assert take(limiter, lim, tokens=400).granted
    refused = take(limiter, lim)
    assert refused.reason == "tokens_per_minute" and 0.2 < refused.wait_s <= 0.4
    limiter.release("p", lim, "a", reserved=400, used=50)  # it used far fewer: 350 ms given back
    after = take(limiter, lim)
    assert after.granted or after.wait_s <= 0.05, after


def test_max_concurrency_leases_released_or_lapsed(limiter):
    lim = limits(max_concurrency=2)
    assert take(limiter, lim, lease_id="a").granted and take(limiter, lim, lease_id="b").granted
    refused = take(limiter, lim, lease_id="c")
    assert not refused.granted and refused.reason == "max_concurrency"
    limiter.release("p", lim, "a", 0, None)
    assert take(limiter, lim, lease_id="c").granted
    # a worker killed mid-call never gives its lease back: it lapses after lease_s
    assert not take(limiter, lim, lease_id="d").granted
    short = "q"
    assert take(limiter, lim, name=short, lease_s=0.15, lease_id="x").granted
    assert take(limiter, lim, name=short, lease_s=0.15, lease_id="y").granted
    assert not take(limiter, lim, name=short, lease_id="z").granted
    time.sleep(0.2)
    assert take(limiter, lim, name=short, lease_id="z").granted


def test_a_refusal_takes_nothing(limiter, client):
    lim = limits(requests_per_minute=60, max_concurrency=1)
    assert take(limiter, lim, lease_id="a").granted
    before = client.hgetall(Keys(PREFIX).provider_rate("p"))
    for _ in range(5):
        assert not take(limiter, lim, lease_id="b").granted
    assert client.hgetall(Keys(PREFIX).provider_rate("p")) == before
    assert client.zcard(Keys(PREFIX).provider_leases("p")) == 1


def test_retry_after_holds_every_caller_and_is_never_shortened(limiter):
    lim = limits()  # no limits configured: a hold-off still applies
    hold_off(limiter, "p", 0.3)
    hold_off(limiter, "p", 0.05)
    refused = take(limiter, lim)
    assert not refused.granted and refused.reason == "retry-after" and 0.1 < refused.wait_s <= 0.3
    assert take(limiter, lim, name="other").granted  # another provider is not held
    time.sleep(refused.wait_s + 0.01)
    assert take(limiter, lim).granted


def test_keys_are_the_deployments_and_expire(limiter, client):
    take(limiter, limits(requests_per_minute=60, max_concurrency=3))
    keys = Keys(PREFIX)
    assert set(k.decode() for k in client.keys("*")) == {keys.provider_rate("p"), keys.provider_leases("p")}
    assert all(client.pttl(k) > 0 for k in client.keys("*"))


def test_two_processes_worth_of_callers_share_one_budget(client):
    """Threads with limiters of their own (as workers have) on one server: one spacing for all."""
    lim = limits(requests_per_minute=1200)  # 50 ms apart
    granted: list[float] = []
    lock = threading.Lock()

    def caller():
        own = RedisLimiter(client, Keys(PREFIX))
        for _ in range(3):
            slot = acquire(own, "shared", lim, 0, 5.0)
            with lock:
                granted.append(time.monotonic())
            slot.release()

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    granted.sort()
    gaps = [b - a for a, b in zip(granted, granted[1:])]
    # granted 50 ms apart by the server's clock; seen here after a reply that may lag on a busy machine
    assert len(granted) == 12 and granted[-1] - granted[0] >= 11 * 0.05 - 0.03 and min(gaps) > 0.01, gaps


# ------------------------------------------------------------------ the waiting loop
class Scripted:
    def __init__(self, *decisions):
        self.decisions = list(decisions)
        self.released = []

    def try_acquire(self, *args):
        return self.decisions.pop(0)

    def release(self, name, lim, lease_id, reserved, used):
        self.released.append(used)

    def hold_off(self, name, seconds):
        raise redis.ConnectionError("down")


def test_acquire_waits_then_times_out_without_pointless_sleeping():
    slept = []
    lim = limits(max_wait_s=1.0)
    got = acquire(Scripted(Decision(False, 0.4, "requests_per_minute"), Decision(True)), "p", lim, 0, 1,
                  sleep=slept.append)
    assert got.reserved == 0 and 0.4 <= slept[0] <= 0.41
    with pytest.raises(RateLimitTimeout, match=r"rate limit of provider 'p' \(retry-after\)"):
        acquire(Scripted(Decision(False, 5.0, "retry-after")), "p", lim, 0, 1, sleep=slept.append)
    assert len(slept) == 1  # a wait past max_wait_s fails at once


def test_an_unreachable_limiter_never_costs_the_call(caplog):
    class Down(Unlimited):
        def try_acquire(self, *args):
            raise redis.ConnectionError("Redis is away")

    # its own level: an in-process embedded worker of an earlier test may have set a parent's to ERROR
    caplog.set_level(logging.WARNING, logger="dispatch.common.ratelimit")
    slot = acquire(Down(), "p", limits(requests_per_minute=1), 0, 1)
    slot.release(5)
    hold_off(Scripted(), "p", 1.0)
    assert "calling without it" in caplog.text


def test_the_installed_limiter_is_resettable():
    mine = Unlimited()
    LIMITER.install(mine)
    try:
        assert LIMITER.current() is mine
        LIMITER.uninstall(Unlimited())  # not the installed one: no effect
        assert LIMITER.current() is mine
    finally:
        LIMITER.reset()
    assert isinstance(LIMITER.current(), Unlimited)


# ------------------------------------------------------------------ config
def test_providers_config_is_strict_and_finite():
    assert DispatchConfig.model_validate({"providers": {"local": {"requests_per_minute": 120,
                                                                  "max_concurrency": 2}}}).providers
    for bad in ({"requests_per_minute": True}, {"requests_per_minute": 0}, {"tokens_per_minute": "5"},
                {"max_concurrency": -1}, {"requests_per_minute": float("inf")}, {"burst": 3}):
        with pytest.raises(ValueError):
            DispatchConfig.model_validate({"providers": {"local": bad}})
    with pytest.raises(ValueError, match="provider name"):
        DispatchConfig.model_validate({"providers": {"has space": {}}})


def test_each_model_caller_gets_its_limits_by_name():
    cfg = DispatchConfig.model_validate({
        "providers": {"openai:api.openai.com": {"requests_per_minute": 500},
                      "local": {"max_concurrency": 1}},
        "agents": {"cloud": {"kind": "llm", "provider": "openai", "model": "m"},
                   "mine": {"kind": "llm", "provider": "openai", "model": "m", "base_url": "http://h:8080/v1",
                            "provider_limit": "local"},
                   "unlimited": {"kind": "llm", "provider": "openai", "model": "m", "base_url": "http://h:8080/v1"},
                   "shell": {"kind": "shell", "command": ["true"]}},
        "validators": {"v": {"kind": "anthropic", "model": "c", "provider_limit": "local"}},
        "planner": {"kind": "openai", "model": "p"}})
    assert cfg.agents["cloud"].options["provider_limits"]["requests_per_minute"] == 500
    assert cfg.planner.options["provider_limits"]["requests_per_minute"] == 500
    assert cfg.agents["mine"].options["provider_limits"]["max_concurrency"] == 1
    assert cfg.validators["v"].options["provider_limits"]["max_concurrency"] == 1
    assert "provider_limits" not in cfg.agents["unlimited"].options
    assert "provider_limits" not in cfg.agents["shell"].options
    again = DispatchConfig.model_validate(json.loads(cfg.model_dump_json()))  # a saved state, loaded
    assert again.model_dump() == cfg.model_dump()
    assert cfg.inline_secret() is None
    assert provider_limit_name("openai", "http://h:8080/v1") == "openai:h:8080"
    assert provider_limit_name("anthropic") == "anthropic:api.anthropic.com"


def test_a_provider_limit_naming_no_table_is_refused():
    with pytest.raises(ValueError, match=r"agents.a.provider_limit: no \[providers.\"typo\"\] table"):
        DispatchConfig.model_validate({"providers": {"local": {}},
                                       "agents": {"a": {"kind": "llm", "provider": "openai", "model": "m",
                                                        "provider_limit": "typo"}}})


def test_llm_agent_accepts_the_options(tmp_path):
    from dispatch.agents.resolve import make_agent

    cfg = DispatchConfig.model_validate({"providers": {"local": {"requests_per_minute": 5}}, "agents": {
        "a": {"kind": "llm", "provider": "openai", "model": "m", "provider_limit": "local"}}})
    agent = make_agent("a", cfg)
    assert agent.client_options["provider_limits"]["requests_per_minute"] == 5
    with pytest.raises(ConfigError, match="provider_limits"):
        make_client({"provider": "openai", "model": "m", "provider_limits": {"max_concurrency": 0}})


# ------------------------------------------------------------------ the client honours them
def test_retry_after_reaches_every_client_of_the_provider(llm_server):
    """A 429 with Retry-After to one client holds another client of the same provider (another worker)."""
    shared = RedisLimiter(fakeredis.FakeRedis(), Keys(PREFIX))
    llm_server.openai(Reply(body={"error": {"message": "slow down"}}, status=429, headers={"retry-after": "1"}),
                      answer_text("ok"))
    options = {"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url}
    with pytest.raises(ProviderError) as info:
        make_client(options, limiter=shared).complete("", [{"role": "user", "content": "x"}])
    assert info.value.status == 429 and info.value.retry_after == 1.0
    assert make_client(options, limiter=shared).complete("", [{"role": "user", "content": "x"}]).text == "ok"
    first, second = llm_server.requests
    assert second.at - first.answered_at >= 0.95


def test_the_clients_own_retries_wait_for_retry_after_as_an_http_date(llm_server):
    from email.utils import formatdate

    llm_server.openai(
        lambda rec: Reply(body={"error": {"message": "busy"}}, status=503,
                          headers={"retry-after": formatdate(time.time() + 2, usegmt=True)}),
        answer_text("done", usage=(30, 12)))
    shared = RedisLimiter(fakeredis.FakeRedis(), Keys(PREFIX))
    client = make_client({"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url,
                          "provider_limits": {"retries": 2, "tokens_per_minute": 600_000}}, limiter=shared)
    assert client.complete("", [{"role": "user", "content": "x"}]).text == "done"
    first, second = llm_server.requests
    assert second.at - first.answered_at >= 0.9  # an HTTP date has whole seconds: at least ~1 s of the 2


def test_a_call_that_cannot_get_a_slot_fails_transient(llm_server):
    shared = RedisLimiter(fakeredis.FakeRedis(), Keys(PREFIX))
    hold_off(shared, provider_limit_name("openai", llm_server.openai_base_url), 30)
    client = make_client({"provider": "openai", "model": "m", "base_url": llm_server.openai_base_url,
                          "provider_limits": {"max_wait_s": 1}}, limiter=shared)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="retry-after") as info:
        client.complete("", [{"role": "user", "content": "x"}])
    assert info.value.transient and time.monotonic() - started < 0.5 and not llm_server.requests


# ------------------------------------------------------------------ embedded: the same scripts in-process
def test_embedded_runs_share_the_limiter_too(cli, tmp_path, llm_server):
    llm_server.fallback = answer_text("part")
    config = tmp_path / "dispatch.json"
    config.write_text(json.dumps({
        "providers": {"local": {"requests_per_minute": 240}},
        "agents": {"writer": {"kind": "llm", "provider": "openai", "model": "m",
                              "base_url": llm_server.openai_base_url, "provider_limit": "local"}}}))
    tasks = [{"task_id": f"t{i}", "agent": "writer", "description": f"part {i}"} for i in range(4)]
    result = cli("--config", str(config), "--skip-phases", "0,1",
                 stdin=json.dumps({"user_prompt": "parts", "tasks": tasks, "config": {"max_workers": 4}}))
    assert result.returncode == 0, result.stderr[-2000:]
    times = sorted(r.at for r in llm_server.requests)
    # granted 250 ms apart; arrivals jitter by tens of ms on a busy machine (unlimited, all 4 came in ~0.2 s)
    assert len(times) == 4 and times[-1] - times[0] >= 0.65, times
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.1, times


def test_an_agent_tasks_own_retry_waits_for_retry_after(cli, tmp_path, llm_server):
    """No ``[providers]`` table: the task is retried once the server's Retry-After has passed (it used to
    come back after about one second)."""
    llm_server.openai(Reply(status=429, headers={"Retry-After": "2"}))
    llm_server.fallback = answer_text("done")
    config = tmp_path / "dispatch.json"
    config.write_text(json.dumps({"agents": {"writer": {
        "kind": "llm", "provider": "openai", "model": "m", "base_url": llm_server.openai_base_url}}}))
    result = cli("--config", str(config), "--skip-phases", "0,1", stdin=json.dumps(
        {"user_prompt": "p", "tasks": [{"task_id": "t", "agent": "writer", "description": "d"}]}))
    assert result.returncode == 0, result.stderr[-2000:]
    (task,) = result.json["results"]
    assert task["success"] and task["attempts"] == 2
    first, second = (r.at for r in llm_server.requests)
    assert second - first >= 1.95, (first, second)


def test_a_transient_agent_failure_carries_the_servers_retry_after(llm_server):
    """What the agent task's Celery retry takes as its countdown floor, so the wait is spent in the broker
    rather than in a worker thread held by the limiter."""
    from dispatch.agents import AgentInvocation, run_agent
    from dispatch.agents.resolve import make_agent
    from dispatch.models import TaskSpec

    llm_server.openai(Reply(status=429, headers={"Retry-After": "7"}))
    cfg = DispatchConfig.model_validate({"agents": {"a": {
        "kind": "llm", "provider": "openai", "model": "m", "base_url": llm_server.openai_base_url}}})
    task = TaskSpec(task_id="t", agent="a", description="d")
    invocation = AgentInvocation(task=task, context=None, dependency_outputs={}, user_prompt="p", workspace_path=".",
                                 run_id="r", attempt=1, timeout_s=10)
    outcome = run_agent(make_agent("a", cfg), invocation)
    assert not outcome.success and outcome.transient and outcome.retry_after_s == 7
