"""``config.trace_dir``: each run leaves its final state and a JSON-lines event trace, named by run id.

The events are taken from the final state, not from what this process happened
to observe: the state holds every phase's start and end as its worker recorded
them and every agent task's start, end and worker, so the trace is the same
whether the run was followed from its start (``run``), attached to later
(``wait``) or cut short.  Only phases this run selected are traced; phases
reused from a loaded state ran in an earlier run.  A trace that cannot be
written is a warning: the run's outcome and exit code stay what they were.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from dispatch.cli.log import Log
from dispatch.common.text import one_line
from dispatch.errors import StateFileError
from dispatch.models import PhaseState


def trace_paths(state: PhaseState) -> Optional[tuple[Path, Path]]:
    """``(state file, events file)`` under the run's ``trace_dir``, or None when it has none."""
    folder = state.run_config.trace_dir
    if not folder:
        return None
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in state.run_id)
    base = Path(folder).expanduser()
    return base / f"{name}.state.json", base / f"{name}.trace.jsonl"


def trace_events(state: PhaseState) -> list[dict[str, Any]]:
    """The run as time-ordered events: run, phase and task starts and ends."""
    events: list[dict[str, Any]] = []
    run_end = max([t for r in [*state.phases_executed, *state.task_results] for t in [r.completed_at] if t]
                  or [state.saved_at or state.started_at or ""])
    if state.started_at:
        events.append({"event": "run_start", "at": state.started_at, "run_id": state.run_id,
                       "phases": state.selected_phases})
    for result in state.phases_executed:
        if result.phase.number not in state.selected_phases:
            continue
        phase = {"phase": result.phase.number, "phase_name": result.phase.title}
        if result.skipped:
            events.append({"event": "phase_skipped", "at": result.started_at or run_end, **phase,
                           "reason": str(result.output_data.get("reason", ""))})
            continue
        events.append({"event": "phase_start", "at": result.started_at, **phase})
        events.append({"event": "phase_end", "at": result.completed_at, **phase, "success": result.success,
                       "duration_ms": result.duration_ms, "error": result.error})
    phase_4_end = next((r.completed_at for r in state.phases_executed if r.phase.number == 4), None)
    for task in state.task_results:
        who = {"task_id": task.task_id, "agent": task.agent, "worker": task.worker}
        if task.skipped or not task.started_at:
            events.append({"event": "task_skipped", "at": phase_4_end or run_end, **who,
                           "reason": one_line(task.error, 300)})
            continue
        events.append({"event": "task_start", "at": task.started_at, **who, "attempts": task.attempts})
        events.append({"event": "task_end", "at": task.completed_at, **who, "success": task.success,
                       "duration_ms": task.duration_ms, "error": one_line(task.error, 300) or None})
    events.append({"event": "run_end", "at": run_end, "run_id": state.run_id, "status": state.status})
    order = {"run_start": 0, "phase_start": 1, "task_start": 2, "task_end": 3, "task_skipped": 4,
             "phase_skipped": 5, "phase_end": 6, "run_end": 7}
    return sorted(events, key=lambda e: (e["at"] or run_end, order[e["event"]]))


def write_trace(state: PhaseState, log: Log) -> None:
    """Write both files when the run asks for a trace; say where, or why not."""
    paths = trace_paths(state)
    if paths is None:
        return
    from dispatch.store.state import save_state_file

    state_file, events_file = paths
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        save_state_file(state, state_file)
        partial = events_file.with_name(events_file.name + ".partial")
        with open(partial, "w", encoding="utf-8") as fh:
            for event in trace_events(state):
                fh.write(json.dumps(event, default=str) + "\n")
        os.replace(partial, events_file)
    except (OSError, StateFileError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        log.warn(f"config.trace_dir {state.run_config.trace_dir}: cannot write the trace ({reason}); "
                 f"the run itself is not affected")
        return
    log.ok(f"Trace written to {events_file} (state: {state_file.name})")
