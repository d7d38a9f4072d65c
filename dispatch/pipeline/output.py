"""The final JSON document of a run (``DispatchOutput``), from its state.

A state whose task results were left in the store (``StoredResults``, a large run followed by the CLI)
gives an output whose ``results`` is that same iterable: ``cli.io.emit_output`` streams it."""
from __future__ import annotations

from typing import Optional

from dispatch.models import DispatchOutput, ExecutionPhase, PhaseState, PhaseTiming, TimingSummary
from dispatch.report.usage import run_usage
from dispatch.pipeline.status import is_critical_failure


def build_output(state: PhaseState, total_ms: float, state_file: Optional[str] = None,
                 error: Optional[str] = None) -> DispatchOutput:
    # phases reused from a loaded state did not run now: they count as skipped in this run's timing
    timings = [PhaseTiming(phase=r.phase, duration_ms=r.duration_ms, success=r.success, skipped=r.skipped)
               if r.skipped or r.phase.number in state.selected_phases
               else PhaseTiming(phase=r.phase, duration_ms=0.0, success=r.success, skipped=True)
               for r in state.phases_executed]
    context = state.result_for(ExecutionPhase.CONTEXT_GATHERING)
    failed = [r for r in state.phases_executed if is_critical_failure(r)]
    success = state.status == "succeeded" and not failed and error is None
    if error is None and failed:
        error = failed[0].error
    results = state.task_results
    output = DispatchOutput(
        success=success, run_id=state.run_id, status=state.status,
        timing_summary=TimingSummary(total_duration_ms=round(total_ms, 1), phases=timings),
        phases_executed=state.phases_executed, results=results if isinstance(results, list) else [],
        quorum_result=state.quorum_result,
        context_summary=(context.output_data.get("context_summary") if context and not context.skipped else None),
        error=error, state_file=state_file, integration=state.integration, usage=run_usage(state),
        pause_reason=state.pause_reason if state.status == "paused" else None)
    if not isinstance(results, list):  # left in the store (``StoredResults``): the writer streams them from there
        output.results = results
    return output
