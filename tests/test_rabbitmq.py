"""RabbitMQ as the broker (result backend and state on Redis): the same runs, the same guarantees."""
from __future__ import annotations

import json

import pytest

from conftest import WorkerPool, base_env, run_cli
from test_faults import finish, keys_by_node, start_cli, wait_for, write_config

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def amqp(rabbitmq_url, redis_server, tmp_path):
    env = base_env(tmp_path, DISPATCH_BROKER_URL=rabbitmq_url, DISPATCH_RESULT_BACKEND=redis_server.url,
                   DISPATCH_KEY_PREFIX="amqp-test")
    pool = WorkerPool(env, tmp_path)
    yield {"env": env, "workers": pool, "url": rabbitmq_url}
    pool.stop_all()


def diamond(n_extra: int) -> str:
    tasks = [{"task_id": "root", "agent": "echo", "description": "first"},
             {"task_id": "left", "agent": "echo", "description": "l", "dependencies": ["root"]},
             {"task_id": "right", "agent": "echo", "description": "r", "dependencies": ["root"]},
             {"task_id": "join", "agent": "echo", "description": "j", "dependencies": ["left", "right"]}]
    tasks += [{"task_id": f"x{i}", "agent": "sleep", "description": "s", "input_data": {"duration_ms": 200}}
              for i in range(n_extra)]
    return json.dumps({"tasks": tasks, "config": {"max_workers": 6}})


def test_a_run_on_rabbitmq_with_phase_and_agent_only_workers(amqp):
    amqp["workers"].start("phases", queues="phases")
    amqp["workers"].start("agents-a", queues="agents", pool="prefork", concurrency=2)
    amqp["workers"].start("agents-b", queues="agents", pool="threads", concurrency=4)
    run = run_cli(["--enable-context"], stdin=diamond(10), env=amqp["env"])
    assert run.returncode == 0, run.stderr
    out = run.json
    assert out["status"] == "succeeded" and len(out["results"]) == 14
    assert {r["worker"].split("@")[0] for r in out["results"]} == {"agents-a", "agents-b"}
    assert "amqp://guest:***@127.0.0.1:5672/dispatch-test-" in run.stderr and "guest:guest" not in run.stderr
    shown = run_cli(["show", "--json", out["run_id"]], env=amqp["env"])  # the state store stays on Redis
    assert shown.returncode == 0 and shown.json["status"] == "succeeded"


def test_kill_9_of_a_node_on_rabbitmq_redelivers_at_once(amqp, tmp_path):
    """RabbitMQ requeues a dead consumer's unacked messages when its connection drops: no visibility timeout."""
    env, pool = amqp["env"], amqp["workers"]
    effects = tmp_path / "effects.log"
    config = write_config(tmp_path, effects, 1.0)
    env["NODE"] = "doomed"
    pool.start("doomed", queues="agents", concurrency=2)
    env["NODE"] = "survivor"
    pool.start("survivor", concurrency=2)
    tasks = json.dumps({"tasks": [{"task_id": f"t{i}", "agent": "step", "description": "s"} for i in range(6)],
                        "config": {"max_workers": 4}})
    cli = start_cli(env, ["--config", str(config)], tasks)
    wait_for(lambda: "doomed" in keys_by_node(effects), what="the doomed node to run a task")
    pool.kill("doomed")
    run = finish(cli, timeout=40)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert sorted(r["task_id"] for r in out["results"]) == [f"t{i}" for i in range(6)]
    assert all(r["success"] for r in out["results"])
    nodes = keys_by_node(effects)
    assert nodes["doomed"] <= nodes["survivor"], nodes
