"""Per-phase retries and duration thresholds (the guide's Future Enhancements), without Celery."""
import json
import time

from dispatch.config import DispatchConfig
from dispatch.cli.log import phase_body
from dispatch.models import ExecutionPhase, PhaseResult, PhaseState
from dispatch.pipeline.phases import PhaseEnv, run_phase

PHASE = ExecutionPhase.TASK_PLANNING


def flaky(failures: int):
    calls = {"n": 0}

    def body(state, env):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError("retriever down")
        return PhaseResult(phase=PHASE, phase_name=PHASE.title, success=True)
    return body, calls


def env_with(**phases):
    events, sleeps = [], []
    env = PhaseEnv(config=DispatchConfig.model_validate({"phases": phases}), on_event=events.append,
                   sleep=sleeps.append)
    return env, events, sleeps


def test_a_raising_phase_is_retried_with_backoff_and_counted():
    env, events, sleeps = env_with(retries=3, retry_backoff_s=0.1)
    body, calls = flaky(2)
    result = run_phase(PHASE, PhaseState(run_id="r"), env, body)
    assert result.success and result.retry_count == 2 and calls["n"] == 3
    assert sleeps == [0.1, 0.2]
    assert events[0].startswith("⚠ Phase 2 attempt 1 failed (ConnectionError: retriever down)")


def test_no_retries_by_default_and_exhausted_retries_fail():
    env, _, sleeps = env_with()
    result = run_phase(PHASE, PhaseState(run_id="r"), env, flaky(1)[0])
    assert not result.success and result.error == "ConnectionError: retriever down" and sleeps == []
    env, _, _ = env_with(retries=1)
    result = run_phase(PHASE, PhaseState(run_id="r"), env, flaky(5)[0])
    assert not result.success and result.retry_count == 1


def test_threshold_exceeded_is_marked_and_logged():
    env, _, _ = env_with(thresholds_ms={"2": 1})  # TOML/JSON keys are strings

    def slow(state, env):
        time.sleep(0.01)
        return PhaseResult(phase=PHASE, phase_name=PHASE.title, success=True, output_data={"tasks": 0})
    state = PhaseState(run_id="r")
    result = run_phase(PHASE, state, env, slow)
    assert result.output_data["threshold_exceeded_ms"] == 1
    assert any("over its threshold of 1ms" in line for line in phase_body(result, state))
    fast = run_phase(PHASE, state, env_with(thresholds_ms={"2": 5000})[0], slow)
    assert "threshold_exceeded_ms" not in fast.output_data
    json.dumps(result.model_dump(mode="json"))
