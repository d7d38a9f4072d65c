"""Phases 0 and 1 side by side, end to end through the CLI: a slow retriever and a slow validator (real HTTP
servers on loopback), embedded and on a real Redis with two real workers; the log's blocks whole and in phase
order; ``[phases] parallel = false`` the sequence; a quorum FAIL beside phase 0 ends like the sequence."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.bench_phase_dag import SlowServices, phases_wall_s, request_json
from conftest import run_cli
from dispatch.cli.log import SEPARATOR
from pipeline_cases import assert_guide_output_shape, executed

DELAY_S = 0.8
SEARCH, CHAT = "/search", "/v1/chat/completions"


def run(env: dict, services: SlowServices, tmp_path: Path, parallel: bool = True, *args: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / f"dispatch-{parallel}.toml"
    config.write_text(services.config(parallel=parallel))
    (tmp_path / "ws").mkdir(exist_ok=True)
    return run_cli(["--enable-context", "--enable-quorum", "--config", str(config), *args],
                   stdin=request_json(tmp_path / "ws"), env=env)


def blocks(stderr: str) -> list[tuple[str, list[str]]]:
    """The log as (phase header, the lines up to the next header), in order."""
    found, lines = [], stderr.splitlines()
    for i, line in enumerate(lines):
        if line == SEPARATOR and i + 1 < len(lines) and re.search(r"\] Phase \d: ", lines[i + 1]):
            found.append((lines[i + 1].split("] ", 1)[1], []))
        elif found and line != SEPARATOR:
            found[-1][1].append(line)
    return found


def assert_blocks_whole_and_in_order(stderr: str, phases: list[int]) -> None:
    got = blocks(stderr)
    assert [title.split(":")[0] for title, _ in got] == [f"Phase {n}" for n in phases], stderr
    for (title, body), n in zip(got, phases):
        others = [line for line in body if re.search(r"Phase (\d) (completed|failed)", line)
                  and f"Phase {n} " not in line]
        assert not others, f"{title}'s block holds another phase's lines: {others}\n{stderr}"
    completed = dict(got)
    assert any("Context gathered" in line for line in completed["Phase 0: Context Gathering"])
    assert any("Quorum decision" in line for line in completed["Phase 1: Quorum Validation"])


def assert_overlapped(services: SlowServices, output: dict) -> None:
    """Phase 1 started before phase 0 ended: on the services' clock and in the recorded results."""
    (search,), (chat,) = services.of(SEARCH), services.of(CHAT)
    assert chat.started < search.ended and search.started < chat.ended, (search, chat)
    results = {p["phase"]: p for p in output["phases_executed"]}
    assert results["QUORUM_VALIDATION"]["started_at"] < results["CONTEXT_GATHERING"]["completed_at"]
    durations = sum(p["duration_ms"] for p in output["timing_summary"]["phases"])
    assert phases_wall_s(output) * 1000 < durations - 0.5 * DELAY_S * 1000  # wall ~ max, not sum
    assert output["timing_summary"]["total_duration_ms"] >= phases_wall_s(output) * 1000


@pytest.mark.timeout(120)
def test_embedded_phase_1_runs_while_phase_0_gathers(cli, tmp_path):
    with SlowServices(DELAY_S) as services:
        out = run(cli.env, services, tmp_path)
        assert out.returncode == 0, out.stderr
        assert_guide_output_shape(out.json)
        assert executed(out.json) == ["CONTEXT_GATHERING", "QUORUM_VALIDATION", "TASK_PLANNING",
                                      "CONTEXT_FILTERING", "PARALLEL_EXECUTION"]
        assert out.json["status"] == "succeeded" and out.json["context_summary"]
        assert_overlapped(services, out.json)
        assert_blocks_whole_and_in_order(out.stderr, [0, 1, 2, 3, 4])


@pytest.mark.timeout(120)
def test_parallel_false_runs_the_sequence(cli, tmp_path):
    with SlowServices(DELAY_S) as services:
        out = run(cli.env, services, tmp_path, False)
        assert out.returncode == 0, out.stderr
        (search,), (chat,) = services.of(SEARCH), services.of(CHAT)
        assert chat.started >= search.ended
        results = {p["phase"]: p for p in out.json["phases_executed"]}
        assert results["QUORUM_VALIDATION"]["started_at"] >= results["CONTEXT_GATHERING"]["completed_at"]
        assert_blocks_whole_and_in_order(out.stderr, [0, 1, 2, 3, 4])


@pytest.mark.timeout(120)
def test_stop_after_phase_1_saves_both_phases_work(cli, tmp_path):
    """``--stop-after-phase 1``: the pair is the last step; the run succeeds only once both have saved."""
    state_file = tmp_path / "s.json"
    with SlowServices(0.3) as services:
        out = run(cli.env, services, tmp_path, True, "--stop-after-phase", "1", "--save-phase-state",
                  str(state_file))
    assert out.returncode == 0, out.stderr
    assert executed(out.json) == ["CONTEXT_GATHERING", "QUORUM_VALIDATION"] and out.json["status"] == "succeeded"
    saved = json.loads(state_file.read_text())
    assert saved["global_context"]["items"] and saved["quorum_result"]["decision"] == "PASS"
    assert_blocks_whole_and_in_order(out.stderr, [0, 1])


@pytest.mark.timeout(120)
def test_a_quorum_fail_beside_phase_0_ends_like_the_sequence(cli, tmp_path):
    outcomes = {}
    for parallel in (True, False):
        with SlowServices(0.3, decision="FAIL") as services:
            out = run(cli.env, services, tmp_path / str(parallel), parallel)
        assert out.returncode == 1, out.stderr
        outcomes[parallel] = (out.json["status"], executed(out.json), out.json["success"],
                              [p["success"] for p in out.json["phases_executed"]])
        assert_blocks_whole_and_in_order(out.stderr, [0, 1])
        assert "Quorum decision: FAIL" in out.stderr
    assert outcomes[True] == outcomes[False] == ("failed", ["CONTEXT_GATHERING", "QUORUM_VALIDATION"], False,
                                                 [True, False])


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_on_redis_phases_0_and_1_run_on_two_workers_at_once(distributed, tmp_path):
    """One thread per worker: the overlap needs both workers."""
    distributed["workers"].start("alpha", concurrency=1)
    distributed["workers"].start("beta", concurrency=1)
    with SlowServices(DELAY_S) as services:
        out = run(distributed["env"], services, tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.json["status"] == "succeeded"
        assert_overlapped(services, out.json)
        assert_blocks_whole_and_in_order(out.stderr, [0, 1, 2, 3, 4])
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("alpha", "beta")}
    ran = {name for name, log in logs.items() if re.search(r"phase_[01]_\w+\[.*\] succeeded", log)}
    assert ran == {"alpha", "beta"}, logs
    # submitted without waiting, then followed with `dispatch wait`: the phases' ids come from the ledger
    with SlowServices(0.3) as services:
        submitted = run(distributed["env"], services, tmp_path, True, "--no-wait")
        assert submitted.returncode == 0, submitted.stderr
        followed = run_cli(["wait", submitted.json["run_id"]], env=distributed["env"])
    assert followed.returncode == 0, followed.stderr
    assert followed.json["status"] == "succeeded" and len(executed(followed.json)) == 5
    assert_blocks_whole_and_in_order(followed.stderr, [0, 1, 2, 3, 4])


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_cancel_while_the_pair_runs_stops_the_run_and_resume_finishes_it(distributed, tmp_path):
    import time

    distributed["workers"].start("alpha", concurrency=1)
    distributed["workers"].start("beta", concurrency=1)
    with SlowServices(5.0) as services:  # long enough for `dispatch cancel` to start on a loaded machine
        submitted = run(distributed["env"], services, tmp_path, True, "--no-wait")
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.json["run_id"]
        deadline = time.time() + 60
        while set(services.arrived) != {SEARCH, CHAT} and time.time() < deadline:
            time.sleep(0.05)
        assert set(services.arrived) == {SEARCH, CHAT}, "phases 0 and 1 did not both start"
        cancelled = run_cli(["cancel", run_id], env=distributed["env"])
        assert cancelled.returncode == 0, cancelled.stderr
        assert len(services.calls) < 2, "the pair ended before the cancel: the test proves nothing"
        followed = run_cli(["wait", run_id], env=distributed["env"])
        assert followed.returncode == 1, followed.stderr
        assert followed.json["status"] == "cancelled" and "TASK_PLANNING" not in executed(followed.json)
        assert "Traceback" not in followed.stderr
        services.delay_s = 0.2
        resumed = run_cli(["resume", run_id], env=distributed["env"])
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.json["run_id"] == run_id and resumed.json["status"] == "succeeded"
    assert executed(resumed.json)[-1] == "PARALLEL_EXECUTION"
