"""Security on real processes: JSON only, passwords and API keys never shown or stored, keys namespaced."""
from __future__ import annotations

import json
import os
import time

import pytest
import redis

from conftest import WorkerPool, base_env, run_cli
from dispatch.runtime.app import create_app
from dispatch.config import Settings, redact_url
from llm_server import FakeLLMServer, answer_text
from test_faults import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(90)]

PASSWORD = "pw-9f3c2e7d1b"
API_KEY = "sk-test-4b1d9e0a7c3f"
# what only Celery and kombu write; everything of dispatch's own lives under the deployment prefix
CELERY_KEYS = ("celery-task-meta-", "celery-taskset-meta-", "chord-unlock-", "_kombu.", "unacked",
               "dispatch.phases", "dispatch.agents")


def redis_dump(client: redis.Redis) -> str:
    """Every key and value in the server, as text, to search for what must not be there."""
    parts = []
    for key in client.scan_iter("*"):
        kind = client.type(key).decode()
        value = {"string": lambda: client.get(key), "hash": lambda: client.hgetall(key),
                 "list": lambda: client.lrange(key, 0, -1), "set": lambda: client.smembers(key),
                 "zset": lambda: client.zrange(key, 0, -1)}.get(kind, lambda: b"")()
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def test_a_pickled_message_is_refused_by_a_real_worker(distributed, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    distributed["workers"].start("strict")
    app = create_app(Settings.from_env(distributed["env"]))
    app.send_task("dispatch.phase_2_task_planning", args=[Evil()], serializer="pickle")
    log = tmp_path / "strict.log"
    wait_for(lambda: "ContentDisallowed" in log.read_text() or "untrusted content" in log.read_text(),
             timeout=20, what="the worker to refuse the pickle")
    time.sleep(1.0)
    assert not marker.exists(), "the worker unpickled a message"
    assert "Refusing to deserialize untrusted content of type pickle" in log.read_text()
    # the worker is still serving JSON after refusing it
    run = run_cli(["--skip-phases", "0,1"], stdin=json.dumps({"tasks": [
        {"task_id": "a", "agent": "echo", "description": "still alive"}]}), env=distributed["env"])
    assert run.returncode == 0, run.stderr


def test_password_redis_works_and_the_password_is_never_shown_or_stored(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    env = base_env(tmp_path, DISPATCH_BROKER_URL=url, DISPATCH_KEY_PREFIX="sec")
    pool = WorkerPool(env, tmp_path)
    try:
        pool.start("locked")
        state_file = tmp_path / "state.json"
        run = run_cli(["--save-phase-state", str(state_file)], env=env, stdin=json.dumps({"tasks": [
            {"task_id": "a", "agent": "echo", "description": "behind a password"}]}))
        assert run.returncode == 0, run.stderr
        assert f"redis://:***@127.0.0.1:{redis_server.port}/0" in run.stderr
        listing = run_cli(["runs", "--json"], env=env)
        shown = run_cli(["show", "--json", run.json["run_id"]], env=env)
        assert listing.returncode == shown.returncode == 0
        authed = redis.Redis.from_url(url)
        conf = create_app(Settings.from_env(env)).control.inspect(timeout=3).conf()  # what Flower shows
        assert conf and all("dispatch_settings" in c for c in conf.values())
        wrong = run_cli(["runs", "--json"], env={**env, "DISPATCH_BROKER_URL": url.replace(PASSWORD, "wrong-guess-x")})
        assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
        assert "wrong-guess-x" not in wrong.stderr + wrong.stdout
        visible = "\n".join([run.stdout, run.stderr, listing.stdout, shown.stdout, json.dumps(conf),
                             state_file.read_text(), (tmp_path / "locked.log").read_text(), redis_dump(authed)])
        assert PASSWORD not in visible
    finally:
        pool.stop_all()


def test_tls_urls_parse_and_are_redacted_everywhere_they_could_show():
    url = f"rediss://default:{PASSWORD}@cache.internal:6380/0?ssl_cert_reqs=required"
    settings = Settings.from_env({"DISPATCH_BROKER_URL": url})
    assert settings.result_backend == settings.state_url == url
    assert redact_url(url) == "rediss://default:***@cache.internal:6380/0?ssl_cert_reqs=required"
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    app = create_app(settings)
    assert app.backend.connparams["connection_class"].__name__ == "SSLConnection"
    assert PASSWORD not in app.backend.as_uri() and PASSWORD not in json.dumps(
        app.conf.table(with_defaults=False, censored=True), default=str)
    # without ssl_cert_reqs Celery refuses a rediss:// backend: the default is to verify the certificate
    bare = Settings.from_env({"DISPATCH_BROKER_URL": f"rediss://:{PASSWORD}@cache.internal:6380/0"})
    assert bare.result_backend.endswith("/0?ssl_cert_reqs=required")
    assert create_app(bare).backend.connparams["ssl_cert_reqs"].name == "CERT_REQUIRED"
    amqps = Settings.from_env({"DISPATCH_BROKER_URL": f"amqps://svc:{PASSWORD}@mq:5671//",
                               "DISPATCH_RESULT_BACKEND": url})
    assert redact_url(amqps.broker_url) == "amqps://svc:***@mq:5671//"


def test_api_keys_reach_the_provider_and_nowhere_else(distributed, tmp_path):
    env = distributed["env"]
    env["OPENAI_API_KEY"] = API_KEY
    with FakeLLMServer() as server:
        server.fallback = answer_text("done, no secrets here")
        config = tmp_path / "dispatch.toml"
        config.write_text(f'[agents.writer]\nkind = "llm"\nprovider = "openai"\nmodel = "m"\n'
                          f'base_url = "{server.openai_base_url}"\napi_key_env = "OPENAI_API_KEY"\n')
        distributed["workers"].start("keyed")
        state_file = tmp_path / "state.json"
        run = run_cli(["--config", str(config), "--save-phase-state", str(state_file)], env=env,
                      stdin=json.dumps({"tasks": [{"task_id": "w", "agent": "writer", "description": "write"}]}))
        assert run.returncode == 0, run.stderr
        assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # used where it belongs
    client = redis.Redis.from_url(distributed["redis"].url)
    everywhere = "\n".join([run.stdout, run.stderr, state_file.read_text(), redis_dump(client),
                            (tmp_path / "keyed.log").read_text()])
    assert API_KEY not in everywhere
    assert "OPENAI_API_KEY" in state_file.read_text()  # the reference travels, the value does not

    inline = tmp_path / "inline.toml"
    inline.write_text(f'[agents.writer]\nkind = "llm"\nprovider = "openai"\napi_key = "{API_KEY}"\n')
    refused = run_cli(["--config", str(inline)], env=env, stdin='{"tasks": []}')
    assert refused.returncode == 2 and "api_key_env" in refused.stderr and API_KEY not in refused.stderr


def test_every_key_is_namespaced_and_deployments_do_not_see_each_other(distributed, tmp_path):
    env_a = distributed["env"]
    env_b = {**env_a, "DISPATCH_KEY_PREFIX": "other-deployment", "DISPATCH_STATE_DIR": str(tmp_path / "b")}
    distributed["workers"].start("ns")
    tasks = json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "x"},
                                  {"task_id": "b", "agent": "echo", "description": "y", "dependencies": ["a"]}]})
    run = run_cli([], stdin=tasks, env=env_a)
    assert run.returncode == 0, run.stderr
    client = redis.Redis.from_url(distributed["redis"].url)
    prefix = distributed["prefix"]
    foreign = [k.decode() for k in client.keys("*") if not k.decode().startswith(f"{prefix}:")]
    assert foreign == [], foreign  # Celery's and kombu's keys too (queues, results, chords, bindings)
    ours = {k.decode().split(":")[1] for k in client.keys(f"{prefix}:*")}
    assert {"run", "runs", "tasks"} <= ours
    assert run_cli(["runs", "--json"], env=env_b).json["runs"] == []
    assert run_cli(["show", run.json["run_id"]], env=env_b).returncode == 2
    assert [r["run_id"] for r in run_cli(["runs", "--json"], env=env_a).json["runs"]] == [run.json["run_id"]]
