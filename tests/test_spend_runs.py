"""Budgets as a user meets them: ``llm`` tasks against a real local OpenAI-compatible server that reports (and
counts) usage, run by the CLI embedded and on Redis with two real workers; a token cap hit part-way pauses the
run, ``dispatch resume --max-tokens`` completes it, and the run's usage equals the server's own count."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli
from llm_server import FakeLLMServer, Reply, counted_answer

ANSWER = "the answer is forty two"


@pytest.fixture
def server():
    with FakeLLMServer() as srv:
        srv.fallback = counted_answer(ANSWER)
        yield srv


def config(tmp_path, server, budget: str, extra: str = "") -> str:
    path = tmp_path / "dispatch.toml"
    path.write_text(f"""
[agents.writer]
kind = "llm"
provider = "openai"
model = "m1"
base_url = "{server.openai_base_url}"

[prices."m1"]
input_per_mtok = 2.0
output_per_mtok = 8.0

[budget]
{budget}
{extra}
""")
    return str(path)


def breakdown(n: int, max_workers: int) -> str:
    tasks = [{"task_id": f"t{i:02d}", "agent": "writer", "description": f"write part marker-{i:02d} of the text"}
             for i in range(n)]
    return json.dumps({"user_prompt": "write the text", "tasks": tasks, "config": {"max_workers": max_workers}})


def requests_per_task(server) -> dict[str, int]:
    found: dict[str, int] = {}
    for request in server.requests:
        text = " ".join(str(m.get("content")) for m in request.body.get("messages", []))
        for marker in re.findall(r"marker-(\d\d)", text)[:1]:
            found[f"t{marker}"] = found.get(f"t{marker}", 0) + 1
    return found


def request_tokens(server) -> list[int]:
    return [sum(len(str(m.get("content", "")).split()) for m in r.body["messages"]) + len(ANSWER.split())
            for r in server.requests]


def check_paused(run, server, cap: int, max_workers: int) -> dict:
    assert run.returncode == 1, run.stderr
    out = run.json
    assert out["status"] == "paused" and out["success"] is False
    assert out["pause_reason"].startswith(f"max_tokens {cap} reached")
    results = {r["task_id"]: r for r in out["results"]}
    ran = {t for t, r in results.items() if r["success"]}
    waiting = {t for t, r in results.items() if r["not_run"]}
    assert ran and waiting and ran | waiting == set(results)
    assert not any(r["skipped"] for r in results.values())  # not run is not "skipped"
    # what ran is exactly what reached the server, once each; nothing started past the cap beyond the
    # reservations of the tasks already running
    assert requests_per_task(server) == {t: 1 for t in ran}
    total = out["usage"]["total"]
    assert [total["input_tokens"], total["output_tokens"]] == server.tokens_sent
    assert total["calls"] == len(ran)
    assert total["input_tokens"] + total["output_tokens"] <= cap + (max_workers - 1) * max(request_tokens(server))
    assert total["cost_usd"] == pytest.approx((total["input_tokens"] * 2 + total["output_tokens"] * 8) / 1e6)
    # the spend, and the exact command to continue, on stderr
    assert "paused: max_tokens" in run.stderr and f"{len(waiting)} task(s) not run" in run.stderr
    command = re.search(r"Continue it with: \S+ \S+ (resume \S+ --max-tokens \d+)", run.stderr)
    assert command and out["run_id"] in command.group(1), run.stderr
    return out


def check_resumed(run, server, n: int, first: dict) -> None:
    assert run.returncode == 0, run.stderr
    out = run.json
    assert out["status"] == "succeeded" and out["run_id"] == first["run_id"]
    assert all(r["success"] for r in out["results"]) and len(out["results"]) == n
    assert requests_per_task(server) == {f"t{i:02d}": 1 for i in range(n)}  # nothing ran twice
    total = out["usage"]["total"]
    assert [total["input_tokens"], total["output_tokens"]] == server.tokens_sent and total["calls"] == n
    assert "Spent: ~$" in run.stderr


@pytest.mark.timeout(180)
def test_a_token_cap_pauses_an_embedded_run_and_resume_completes_it(server, tmp_path, cli):
    cfg = config(tmp_path, server, "max_tokens = 300")
    run = cli("--config", cfg, stdin=breakdown(8, 1))
    first = check_paused(run, server, 300, 1)
    # one worker slot: each task reserves the writer's mean, so the spend stays under the cap itself
    total = first["usage"]["total"]
    assert total["input_tokens"] + total["output_tokens"] <= 300
    assert re.search(r"Phase 4 completed in \d+ms \(\d+ succeeded, 0 failed, \d+ not run; spent ~\$", run.stderr)
    assert "⏸ t07 writer not run: max_tokens 300 reached" in run.stderr
    resumed = cli("resume", first["run_id"], "--max-tokens", "5000")
    check_resumed(resumed, server, 8, first)
    assert "Budget: max_tokens = 5000" in resumed.stderr


@pytest.mark.timeout(180)
def test_a_quorum_that_spends_the_cap_pauses_the_run_before_phase_4(server, tmp_path, cli):
    verdict = json.dumps({"alignment_score": 95, "recommendation": "PASS", "missing_requirements": []})
    server.for_model("judge", Reply(text=verdict, usage=(400, 40)))
    cfg = config(tmp_path, server, "max_tokens = 100", f"""
[validators.judge]
kind = "openai"
model = "judge"
base_url = "{server.openai_base_url}"
""")
    run = cli("--config", cfg, "--enable-quorum", stdin=breakdown(3, 2))
    assert run.returncode == 1, run.stderr
    out = run.json
    assert out["status"] == "paused" and out["pause_reason"] == "max_tokens 100 reached (440 tokens spent)"
    assert all(r["not_run"] for r in out["results"]) and len(server.requests) == 1  # the validator only
    assert out["usage"]["phases"]["QUORUM_VALIDATION"]["input_tokens"] == 400
    assert out["quorum_result"]["votes"][0]["usage"]["calls"] == 1
    assert "Phase 1 completed" in run.stderr and "(spent 440 tokens)" in run.stderr


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_same_on_redis_with_two_workers(distributed, tmp_path):
    with FakeLLMServer() as server:
        server.fallback = counted_answer(ANSWER, delay_s=0.15)  # long enough for tasks to overlap
        distributed["workers"].start("alpha", concurrency=2)
        distributed["workers"].start("beta", concurrency=2)
        cfg = config(tmp_path, server, "max_tokens = 400\ndefault_estimate_tokens = 40")
        first = check_paused(run_cli(["--config", cfg], stdin=breakdown(14, 4), env=distributed["env"]),
                             server, 400, 4)
        workers = {r["worker"].split("@")[0] for r in first["results"] if r["success"]}
        assert workers == {"alpha", "beta"}, workers
        assert server.max_in_flight >= 2  # tasks ran at once: their reservations are what kept the spend near the cap
        resumed = run_cli(["resume", first["run_id"], "--max-tokens", "100000"], env=distributed["env"])
        check_resumed(resumed, server, 14, first)
