"""Every phase 0-3 has a timeout (``[phases] timeouts_s``): a body that hangs, even blocked in a read, ends
as a failed phase result, the run fails cleanly with its state saved, and ``resume`` finishes it."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import run_cli
from dispatch.config import DEFAULT_PHASE_TIMEOUTS_S, DispatchConfig, PhaseOptions
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState
from dispatch.pipeline.phases import PhaseEnv, run_phase


class TrickleServer:
    """Accepts HTTP requests and answers one byte every 0.2 s, forever: no per-read timeout ever fires."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            while not self.stopped.is_set():
                conn.sendall(b" ")
                time.sleep(0.2)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def trickle():
    server = TrickleServer()
    yield server
    server.stop()


# ----------------------------------------------------------------- config
def test_timeouts_default_per_phase_and_are_strict_and_finite():
    options = PhaseOptions()
    assert [options.timeout_for(n) for n in range(4)] == [DEFAULT_PHASE_TIMEOUTS_S[n] for n in range(4)]
    assert options.timeout_for(4) is None
    mine = DispatchConfig.model_validate({"phases": {"timeouts_s": {"1": 5}}}).phases
    assert mine.timeout_for(1) == 5 and mine.timeout_for(0) == DEFAULT_PHASE_TIMEOUTS_S[0]
    for bad, says in [({"0": "5"}, "valid number"), ({"0": True}, "valid number"), ({"0": float("inf")}, "finite"),
                      ({"0": 0}, "greater than 0"), ({"0": -1}, "greater than 0"), ({"0": 1e9}, "less than"),
                      ({"4": 60}, "phase 4 has no phase timeout"), ({"7": 60}, "no phase 7")]:
        with pytest.raises(ValidationError, match=says):
            PhaseOptions.model_validate({"timeouts_s": bad})


# ----------------------------------------------------------------- run_phase
def test_a_body_blocked_in_a_read_fails_at_its_timeout_and_never_writes_the_state_afterwards():
    read_end, write_end = os.pipe()
    state = PhaseState(run_id="r1", user_prompt="before")

    def blocked(work: PhaseState, env: PhaseEnv) -> PhaseResult:
        os.read(read_end, 1)  # a syscall: no exception, no signal reaches it in this thread
        work.user_prompt = "written by an abandoned body"
        return PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="x", success=True)

    env = PhaseEnv(config=DispatchConfig.model_validate({"phases": {"timeouts_s": {"2": 0.5}, "retries": 3}}))
    t0 = time.monotonic()
    result = run_phase(ExecutionPhase.TASK_PLANNING, state, env, blocked)
    assert 0.45 < time.monotonic() - t0 < 2
    assert not result.success and result.error.startswith("timed out: phase 2 ran past its timeout (0.5s")
    assert result.retry_count == 0  # a hang is not retried: the timeout covers every attempt
    os.write(write_end, b"x")  # the abandoned body goes on, on its own copy
    time.sleep(0.2)
    assert state.user_prompt == "before" and state.result_for(ExecutionPhase.TASK_PLANNING) is result
    os.close(read_end), os.close(write_end)


def test_a_body_in_time_keeps_its_writes_and_its_errors_are_retried():
    state = PhaseState(run_id="r2")
    calls = []

    def flaky(work: PhaseState, env: PhaseEnv) -> PhaseResult:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("retriever down")
        work.user_prompt = "planned"
        return PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="x", success=True)

    env = PhaseEnv(config=DispatchConfig.model_validate({"phases": {"retries": 1, "retry_backoff_s": 0}}),
                   sleep=lambda s: None)
    result = run_phase(ExecutionPhase.TASK_PLANNING, state, env, flaky)
    assert result.success and result.retry_count == 1 and state.user_prompt == "planned"


# ----------------------------------------------------------------- the CLI, embedded and on Redis
def hanging_quorum(path: Path, url: str, timeout_s: float = 2) -> Path:
    """A validator on a server that never finishes answering (its own timeout would be 20 minutes)."""
    path.write_text(json.dumps({
        "validators": {"slow": {"kind": "openai", "model": "m", "base_url": url, "api_key_env": "",
                                "timeout_s": 600}},
        "phases": {"timeouts_s": {"1": timeout_s}}}))
    return path


TASKS = json.dumps({"tasks": [{"task_id": "a", "agent": "echo", "description": "say a"},
                              {"task_id": "b", "agent": "echo", "description": "say b", "dependencies": ["a"]}]})


def check_failed_then_resumed(failed, env, tmp_path: Path) -> None:
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    out = failed.json
    assert out["status"] == "failed" and not out["success"]
    run_id = out["run_id"]
    shown = run_cli(["show", "--json", run_id], env=env).json
    phase_1 = [p for p in shown["phases_executed"] if p["phase"] == "QUORUM_VALIDATION"][0]
    assert phase_1["success"] is False and "timed out: phase 1 ran past its timeout (2s" in phase_1["error"]
    assert shown["status"] == "failed" and not shown["task_results"]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"phases": {"timeouts_s": {"1": 30}}}))
    resumed = run_cli(["resume", run_id, "--config", str(rules)], env=env)
    assert resumed.returncode == 0, resumed.stderr
    final = resumed.json
    assert final["run_id"] == run_id and final["status"] == "succeeded"
    assert sorted(r["task_id"] for r in final["results"] if r["success"]) == ["a", "b"]


@pytest.mark.timeout(90)
def test_embedded_a_hung_validator_fails_phase_1_at_its_timeout_and_resume_finishes(cli, tmp_path, trickle):
    config = hanging_quorum(tmp_path / "slow.json", trickle.url)
    t0 = time.monotonic()
    failed = cli("--enable-quorum", "--config", str(config), stdin=TASKS)
    assert time.monotonic() - t0 < 30, failed.stderr
    assert trickle.requests >= 1  # the validator did call, and hung
    check_failed_then_resumed(failed, cli.env, tmp_path)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_on_redis_a_hung_validator_fails_phase_1_and_the_worker_goes_on(distributed, tmp_path, trickle):
    env = distributed["env"]
    distributed["workers"].start("w1")
    config = hanging_quorum(tmp_path / "slow.json", trickle.url)
    failed = run_cli(["--enable-quorum", "--config", str(config)], stdin=TASKS, env=env, timeout=60)
    assert trickle.requests >= 1
    check_failed_then_resumed(failed, env, tmp_path)  # the same worker runs the resumed phases
    worker = distributed["workers"].procs["w1"]
    assert worker.poll() is None
    os.killpg(worker.pid, signal.SIGTERM)  # the abandoned body is still blocked on the server: no hang at exit
    worker.wait(20)
    assert "still blocked: exiting without waiting" in (tmp_path / "w1.log").read_text()
