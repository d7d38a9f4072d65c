"""docker-compose.yml, Dockerfile and .dockerignore checked against the code.

No container engine runs on the machines this suite targets (docker here is a
client without a daemon), so the files are parsed and held to what the code
expects: the Celery app and queue names, the ``Settings`` environment
variables, a worker service that ``--scale worker=N`` can replicate, Flower
with its API reachable, and a Redis that survives a restart.
"""
from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from conftest import ROOT
from dispatch.runtime.app import AGENT_QUEUE, PHASE_QUEUE, create_app
from dispatch.config import ENV_ALIASES, Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extras: pip install -e '.[test]'")

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DISPATCH_SERVICES = ("worker", "agents", "flower", "cli")
# what a user puts in .env; everything else falls back to the file's own defaults
DOTENV = {"REDIS_PASSWORD": "s3cret-pw", "FLOWER_BASIC_AUTH": "admin:pw"}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and ``$$``), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value).replace("$$", "$")


def command(service: str) -> list[str]:
    cmd = interpolate(SERVICES[service]["command"], DOTENV)
    return shlex.split(cmd) if isinstance(cmd, str) else cmd


def option(cmd: list[str], *names: str) -> str:
    for i, arg in enumerate(cmd):
        for name in names:
            if arg == name:
                return cmd[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"{names} not in {cmd}")


def test_services_and_the_worker_scales():
    assert {"redis", "worker", "flower"} <= set(SERVICES)
    worker = SERVICES["worker"]
    # --scale worker=N needs replicas that do not collide: no fixed name, no host port
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    for name in DISPATCH_SERVICES:
        assert SERVICES[name]["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_commands_use_the_app_and_the_queues_of_the_code():
    for name, queues in (("worker", {PHASE_QUEUE, AGENT_QUEUE}), ("agents", {AGENT_QUEUE})):
        cmd = command(name)
        assert cmd[:4] == ["celery", "-A", "dispatch.runtime.worker", "worker"], cmd
        assert set(option(cmd, "-Q", "--queues").split(",")) == queues
        assert option(cmd, "-P", "--pool") in ("prefork", "threads")
        assert int(option(cmd, "-c", "--concurrency")) >= 1
    assert command("flower")[:4] == ["celery", "-A", "dispatch.runtime.worker", "flower"]
    assert (ROOT / "dispatch" / "runtime" / "worker.py").read_text().count("create_app(Settings.from_env())") == 1
    assert "from dispatch.runtime.worker import app" in (ROOT / "worker.py").read_text()


def test_environment_names_exist_in_settings_and_build_a_valid_app():
    fields = {f"DISPATCH_{name.upper()}" for name in Settings.model_fields} | set(ENV_ALIASES)
    for name in DISPATCH_SERVICES:
        env = interpolate(SERVICES[name]["environment"], DOTENV)
        unknown = {k for k in env if k.startswith("DISPATCH_")} - fields
        assert not unknown, f"{name}: {unknown} are not Settings fields"
        settings = Settings.from_env(env)
        assert not settings.embedded and settings.broker_url.startswith("redis://")
        host = settings.broker_url.rsplit("@", 1)[1].split(":")[0]
        assert host in SERVICES, f"the broker host {host!r} is not a service"
        assert settings.state_url == settings.result_backend == settings.broker_url
        assert settings.config_file == (env.get("DISPATCH_CONFIG") or None)
        assert "s3cret-pw" not in str(create_app(settings).conf.table(with_defaults=False, censored=True))


def test_secrets_are_required_from_the_environment_not_written_in_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "s3cret" not in text and ":?" in text
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        interpolate(SERVICES["worker"]["environment"], {})
    password = interpolate(SERVICES["redis"]["command"], DOTENV)
    assert option(password, "--requirepass") == DOTENV["REDIS_PASSWORD"]


def test_redis_persists_and_ports_stay_on_localhost():
    redis_cmd = interpolate(SERVICES["redis"]["command"], DOTENV)
    assert option(redis_cmd, "--appendonly") == "yes"
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])
    for name in ("redis", "flower"):
        for port in interpolate(SERVICES[name]["ports"], DOTENV):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_flower_api_is_enabled_with_authentication():
    env = interpolate(SERVICES["flower"]["environment"], DOTENV)
    # Flower 2 answers /api/* only with auth configured (or FLOWER_UNAUTHENTICATED_API)
    assert env["FLOWER_BASIC_AUTH"] == "admin:pw" and "FLOWER_UNAUTHENTICATED_API" not in env


def dockerfile() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest))
            current = ""
    return lines


def test_dockerfile_builds_the_package_and_runs_a_worker_as_non_root():
    steps = dockerfile()
    kinds = [k for k, _ in steps]
    base = dict(steps)["FROM"]
    major, minor = re.search(r"python:(\d+)\.(\d+)", base).groups()
    assert (int(major), int(minor)) >= (3, 11)
    copied = " ".join(rest for kind, rest in steps if kind == "COPY")
    for path in ("pyproject.toml", "dispatch", "cli.py", "worker.py"):
        assert path in copied and (ROOT / path).exists()
    install = " ".join(rest for kind, rest in steps if kind == "RUN")
    assert "pip install ." in install and "flower" in install
    assert kinds.index("USER") < kinds.index("CMD") and dict(steps)["USER"] != "root"
    import json

    cmd = json.loads(dict(steps)["CMD"])
    assert cmd[:4] == ["celery", "-A", "dispatch.runtime.worker", "worker"]
    assert set(option(cmd, "-Q").split(",")) == {PHASE_QUEUE, AGENT_QUEUE}


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".dispatch", ".env", "tests"} <= ignored
    assert not ignored & {"dispatch", "cli.py", "worker.py", "pyproject.toml", "README.md"}

