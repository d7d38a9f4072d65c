"""Phase selection as the guide states it, without Celery."""
import pytest

from dispatch.errors import UsageError
from dispatch.models import ExecutionPhase, PhaseConfig, PhaseResult, PhaseState
from dispatch.pipeline.selection import check_inputs_available, selected_phases


def sel(**kw):
    return selected_phases(PhaseConfig(**kw))


@pytest.mark.parametrize("flags, expected", [
    ({}, [2, 3, 4]),                                                   # backward compatible default
    ({"enable_context": True}, [0, 2, 3, 4]),
    ({"enable_context": True, "enable_quorum": True}, [0, 1, 2, 3, 4]),
    ({"only_phase": 0, "enable_context": True}, [0]),                  # example 1
    ({"only_phase": 0}, [0]),                                          # naming phase 0 enables it
    ({"only_phase": 1}, [1]),
    ({"stop_after_phase": 1, "enable_context": True, "enable_quorum": True}, [0, 1]),  # example 2
    ({"skip_phases": [0, 1]}, [2, 3, 4]),                              # example 3
    ({"skip_phases": [0, 1], "enable_context": True, "enable_quorum": True}, [2, 3, 4]),
    ({"stop_after_phase": 3}, [2, 3]),
    ({"only_phase": 4}, [4]),
])
def test_selection(flags, expected):
    assert sel(**flags) == expected


@pytest.mark.parametrize("flags, message", [
    ({"only_phase": 1, "skip_phases": [1]}, "contradicts --skip-phases"),
    ({"only_phase": 5}, "numbered 0-4"),
    ({"only_phase": -1}, "numbered 0-4"),
    ({"stop_after_phase": 9}, "numbered 0-4"),
    ({"skip_phases": [7]}, "numbered 0-4"),
    ({"only_phase": 3, "stop_after_phase": 2}, "contradicts --stop-after-phase"),
    ({"stop_after_phase": 1}, "no phase selected"),   # 0 and 1 not enabled, 2-4 after the stop
])
def test_contradictions_are_usage_errors(flags, message):
    with pytest.raises(UsageError, match=message) as info:
        sel(**flags)
    assert info.value.exit_code == 2


def test_only_phase_4_without_state_is_refused_with_the_way_out():
    cfg = PhaseConfig(only_phase=4)
    with pytest.raises(UsageError) as info:
        check_inputs_available(cfg, selected_phases(cfg), None)
    assert "--stop-after-phase 3" in str(info.value) and "--load-phase-state" in str(info.value)


def completed(*phases):
    state = PhaseState(run_id="r")
    for n in phases:
        phase = ExecutionPhase.of(n)
        state.record(PhaseResult(phase=phase, phase_name=phase.title, success=True))
    return state


def test_only_phase_4_with_state_holding_phase_3_is_accepted():
    cfg = PhaseConfig(only_phase=4)
    check_inputs_available(cfg, selected_phases(cfg), completed(2, 3))


def test_phase_3_needs_phase_2():
    cfg = PhaseConfig(only_phase=3)
    with pytest.raises(UsageError, match="phase 2"):
        check_inputs_available(cfg, selected_phases(cfg), None)
    check_inputs_available(cfg, selected_phases(cfg), completed(2))


def test_context_enabled_but_phase_0_skipped_needs_a_loaded_context():
    cfg = PhaseConfig(enable_context=True, skip_phases=[0])
    with pytest.raises(UsageError, match="phase 0"):
        check_inputs_available(cfg, selected_phases(cfg), None)
    check_inputs_available(cfg, selected_phases(cfg), completed(0))


def test_failed_phase_in_state_does_not_count_as_available():
    state = PhaseState(run_id="r")
    phase = ExecutionPhase.CONTEXT_FILTERING
    state.record(PhaseResult(phase=phase, phase_name=phase.title, success=False, error="x"))
    state.record(PhaseResult(phase=ExecutionPhase.TASK_PLANNING, phase_name="Task Planning", success=True))
    cfg = PhaseConfig(only_phase=4)
    with pytest.raises(UsageError):
        check_inputs_available(cfg, selected_phases(cfg), state)
