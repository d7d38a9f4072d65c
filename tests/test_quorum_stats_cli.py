"""``dispatch quorum stats`` over real embedded runs: the recorded votes, as a table and as JSON."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(120)

TASKS = json.dumps({"user_prompt": "build a postgres adapter with a connection pool", "tasks": [
    {"task_id": "pool", "agent": "echo", "description": "Implement the postgres connection pool"},
    {"task_id": "adapter", "agent": "echo", "description": "Implement the postgres adapter on the pool",
     "dependencies": ["pool"]}]})


def test_quorum_stats_reads_the_votes_of_saved_runs(cli):
    for _ in range(2):
        run = cli("--enable-quorum", "-q", stdin=TASKS)
        assert run.returncode == 0, run.stderr
    stats = cli("quorum", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    doc = stats.json
    assert doc["runs"] == 2
    rules = [v for v in doc["validators"] if v["validator"] == "rules"]
    assert rules and rules[0]["votes"] == 2 and rules[0]["pass_votes"] == 2, doc
    table = cli("quorum", "stats")
    assert table.returncode == 0 and "rules" in table.stdout
