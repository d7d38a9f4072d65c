"""Issue 14's chaos stall: a phase-4 message lost between the queue and kombu's unacked record (its worker
killed -9) left the run running forever.  The workers' stall watchdog sends it again, with its own Celery id
and chord: the run completes, each agent once, also when nobody follows it (``--no-wait``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from conftest import run_cli
from dispatch.store import Keys, stall
from dispatch.store.scheduler import CLOSE_LEASE_S
from test_faults import wait_for


def test_only_sends_nothing_accounts_for_and_whose_message_is_gone_count_as_lost():
    import fakeredis

    client, keys = fakeredis.FakeRedis(), Keys("p")
    dag = keys.dag("r1")
    client.hset(keys.ledger("r1"), mapping={"c-a": "agent:a", "c-b": "agent:b", "c-c": "agent:c", "c-d": "agent:d",
                                             "c-e": "agent:e", "c-p": "phase_4"})
    client.hset(dag["results"], "a", "{}")                      # finished
    client.hset(dag["claims"], "b", "c-b")                      # running
    client.hset(dag["outbox"], mapping={"a": "c", "__start__": "d\ne"})  # a's completer may not have sent c yet
    client.set(dag["state"], "{}")
    assert stall.phase_4_runs(client, keys) == ["r1"]
    assert stall.unaccounted_sends(client, keys, "r1") == {"c-d": "d", "c-e": "e"}
    client.lpush("p:p.agents", b'{"headers": {"id": "c-d"}}')
    assert stall.messages_present(client, ["c-d", "c-e"], ["p:p.agents"], "p:unacked") == {"c-d"}
    client.hset("p:unacked", "tag", b'[{"headers": {"id": "c-e"}}]')
    assert stall.messages_present(client, ["c-d", "c-e"], ["p:p.agents"], "p:unacked") == {"c-d", "c-e"}
    client.set(dag["paused"], "max_cost_usd")                  # held at a budget cap on purpose
    assert stall.unaccounted_sends(client, keys, "r1") == {}


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)

def logged(tmp_path: Path, log: Path) -> Path:
    config = tmp_path / "agents.json"
    config.write_text(json.dumps({"agents": {"step": {"kind": "shell", "command": [
        "sh", "-c", f"echo {{task_id}} >> {log}"]}}}))
    return config


def test_a_lost_phase_4_message_is_sent_again_and_the_run_completes_each_agent_once(distributed, tmp_path):
    env = {**distributed["env"], "DISPATCH_STALL_CHECK_S": "1"}
    workers, prefix = distributed["workers"], distributed["prefix"]
    workers.env = env
    workers.start("phases", queues="phases")  # nothing takes agent messages yet: one can be lost on purpose
    log = tmp_path / "executions.log"
    tasks = [{"task_id": "a", "agent": "step", "description": "a"},
             {"task_id": "b", "agent": "step", "description": "b"},
             {"task_id": "c", "agent": "step", "description": "c", "dependencies": ["a", "b"]}]
    submitted = run_cli(["--no-wait", "--config", str(logged(tmp_path, log))], stdin=json.dumps({"tasks": tasks}),
                        env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.json["run_id"]
    client = redis.Redis.from_url(distributed["redis"].url)
    queue = f"{prefix}:{prefix}.agents"  # kombu's list under the deployment's global_keyprefix
    wait_for(lambda: client.llen(queue) == 2, what="phase 4 to send a and b")
    lost = [m for m in client.lrange(queue, 0, -1) if b"dispatch.agent:b" in m]
    assert len(lost) == 1 and client.lrem(queue, 1, lost[0]) == 1  # as a worker killed after BRPOP would

    workers.start("agents", queues="agents")
    deadline = time.time() + 60
    while run_cli(["show", "--json", run_id], env=env).json["status"] != "succeeded":
        assert time.time() < deadline, (tmp_path / "agents.log").read_text()[-3000:]
        time.sleep(0.5)
    shown = run_cli(["show", "--json", run_id], env=env).json
    assert sorted(r["task_id"] for r in shown["task_results"] if r["success"]) == ["a", "b", "c"]
    assert sorted(log.read_text().split()) == ["a", "b", "c"]  # each agent once
    logs = (tmp_path / "agents.log").read_text() + (tmp_path / "phases.log").read_text()
    assert "sent 1 lost phase-4 message(s) again: b" in logs
    time.sleep(2.5)  # two more looks of the watchdog: nothing is sent twice
    assert logs.count("lost phase-4 message") == ((tmp_path / "agents.log").read_text()
                                                  + (tmp_path / "phases.log").read_text()).count("lost phase-4 message")
    assert sorted(log.read_text().split()) == ["a", "b", "c"]


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_chord_that_lost_a_part_is_closed_once_every_task_has_run(distributed, tmp_path):
    """A duplicate send (a redelivered completer's) counted in the chord whose message was then lost: every
    task has run, yet the chord waits for one more part.  The watchdog sends its collect step instead."""
    env = {**distributed["env"], "DISPATCH_STALL_CHECK_S": "1"}
    workers, prefix = distributed["workers"], distributed["prefix"]
    workers.env = env
    workers.start("phases", queues="phases")
    log = tmp_path / "executions.log"
    tasks = [{"task_id": "a", "agent": "step", "description": "a"},
             {"task_id": "b", "agent": "step", "description": "b", "dependencies": ["a"]}]
    submitted = run_cli(["--no-wait", "--config", str(logged(tmp_path, log))], stdin=json.dumps({"tasks": tasks}),
                        env=env)
    run_id = submitted.json["run_id"]
    client = redis.Redis.from_url(distributed["redis"].url)
    wait_for(lambda: client.llen(f"{prefix}:{prefix}.agents") == 1, what="phase 4 to send a")
    (size_key,) = client.keys(f"{prefix}:celery-taskset-meta-*.s")
    client.incr(size_key.decode()[:-2] + ".t")  # one more part counted, whose message never comes

    workers.start("agents", queues="agents")
    deadline = time.time() + 60
    while run_cli(["show", "--json", run_id], env=env).json["status"] != "succeeded":
        assert time.time() < deadline, (tmp_path / "phases.log").read_text()[-3000:]
        time.sleep(0.5)
    assert sorted(log.read_text().split()) == ["a", "b"]
    logs = (tmp_path / "agents.log").read_text() + (tmp_path / "phases.log").read_text()
    assert f"run {run_id}: phase 4 finished but its chord did not close" in logs
    waited = run_cli(["wait", run_id], env=env, timeout=30)  # phase 4's own result came with the collect step
    assert waited.returncode == 0, waited.stderr


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_close_claimed_by_a_collect_step_that_died_lapses_and_is_done_again(distributed, tmp_path):
    """The collect step claimed phase 4's close, then its worker was killed before closing (bench/chaos.py
    found it): its redelivery finds the close taken and stores nothing.  The claim is a lease its closer
    renews while it works: once it lapses the watchdog sends the close again."""
    env = {**distributed["env"], "DISPATCH_STALL_CHECK_S": "1"}
    workers, prefix = distributed["workers"], distributed["prefix"]
    workers.env = env
    workers.start("phases", queues="phases")
    log = tmp_path / "executions.log"
    submitted = run_cli(["--no-wait", "--config", str(logged(tmp_path, log))],
                        stdin=json.dumps({"tasks": [{"task_id": "a", "agent": "step", "description": "a"}]}), env=env)
    run_id = submitted.json["run_id"]
    client = redis.Redis.from_url(distributed["redis"].url)
    wait_for(lambda: client.llen(f"{prefix}:{prefix}.agents") == 1, what="phase 4 to send a")
    # as left by a closer killed 25 s ago: nobody renews its lease, which lapses 5 s from now
    client.set(Keys(prefix).dag(run_id)["closed"], "1", ex=CLOSE_LEASE_S - 25)

    workers.start("agents", queues="agents")
    deadline = time.time() + 60
    while run_cli(["show", "--json", run_id], env=env).json["status"] != "succeeded":
        assert time.time() < deadline, (tmp_path / "phases.log").read_text()[-3000:]
        time.sleep(0.5)
    assert log.read_text().split() == ["a"]
    logs = (tmp_path / "agents.log").read_text() + (tmp_path / "phases.log").read_text()
    assert f"run {run_id}: phase 4 finished but its chord did not close" in logs
