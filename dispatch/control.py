"""Run control from the store: the task ids a run sent, cancelling it, resuming it.

A run lives in Redis (or, embedded, a directory) under its id, so any process
can act on it later: ``dispatch cancel`` from another terminal, ``dispatch
resume`` the next morning.  No Celery here: revoking is a callable the caller
passes in, so this logic is tested against a plain Redis.

Cancel semantics: a key ``<prefix>:cancel:<run_id>`` (with the state TTL) is
set first, so every phase task still to start passes the run through and every
agent task still to start fails at once with "cancelled" without dispatching
its dependents; then the task ids recorded in the run's ledger are revoked
(queued ones are dropped; running ones are terminated where the pool allows it,
prefork; threads-pool tasks finish); then the stored state is marked
``cancelled`` with whatever phase 4 had finished.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .config import DispatchConfig, Settings
from .errors import UsageError
from .logs import Log
from .models import ALL_PHASES, ExecutionPhase, PhaseConfig, PhaseState
from .runtime import Runtime
from .scheduler import DagScheduler

ACTIVE = ("pending", "running")


class RunLedger:
    """The Celery task ids a run has sent, and where phase 4 reports its progress.

    Recorded as tasks are sent (phases by the client at submit, agent tasks by
    whoever dispatches them), so ``cancel`` can revoke tasks that have not
    started yet.  Keys expire with the run's state.
    """

    def __init__(self, client: Any, prefix: str, run_id: str, ttl_s: int) -> None:
        self.client = client
        self.run_id = run_id
        self.ttl_s = max(1, int(ttl_s))
        self.key = f"{prefix}:tasks:{run_id}"
        self.progress_key = f"{prefix}:progress:{run_id}"
        self.limits_key = f"{prefix}:limits:{run_id}"

    def record(self, ids: dict[str, str], pipe: Any = None) -> None:
        """``{celery_task_id: label}``, e.g. ``{"3f2c...": "agent:gen-db-writer"}``."""
        if not ids:
            return
        own = pipe is None
        pipe = self.client.pipeline(transaction=False) if own else pipe
        pipe.hset(self.key, mapping=ids)
        pipe.expire(self.key, self.ttl_s)
        if own:
            pipe.execute()

    def tasks(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.key).items()}

    def start_phase_4(self, celery_id: str, total: int, limits: dict[str, float]) -> None:
        """Phase 4's task id (agent tasks report ``done/total`` on it, where Flower and the CLI look)
        and each task's timeout, which sets the time limits of its Celery task whoever dispatches it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.progress_key, json.dumps({"task_id": celery_id, "total": total}), ex=self.ttl_s)
        pipe.delete(self.limits_key)
        if limits:
            pipe.hset(self.limits_key, mapping={tid: repr(float(t)) for tid, t in limits.items()})
            pipe.expire(self.limits_key, self.ttl_s)
        pipe.execute()

    @staticmethod
    def parse_target(raw: Any) -> Optional[tuple[str, int]]:
        if not raw:
            return None
        target = json.loads(raw)
        return target["task_id"], int(target["total"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Cancellation:
    run_id: str
    previous_status: str
    status: str
    revoked: int
    finished_tasks: int


def cancel_run(run_id: str, settings: Settings, client: Any, store: Any,
               revoke: Callable[[list[str]], None]) -> Cancellation:
    """Stop a run wherever it is; idempotent (cancelling twice revokes again, changes nothing else)."""
    state = store.load(run_id)
    if state is None:
        raise UsageError(f"no run '{run_id}' in the state store (see 'dispatch runs')")
    previous = state.status
    if previous in ("succeeded", "failed"):
        raise UsageError(f"run {run_id} already {previous}: nothing to cancel")
    runtime = Runtime(settings, client)
    client.set(runtime.cancel_key(run_id), "1", ex=max(1, settings.state_ttl_s))
    ids = sorted(RunLedger(client, settings.key_prefix, run_id, settings.state_ttl_s).tasks())
    if ids:
        revoke(ids)
    # the chord may never collect once its parts are revoked: phase 4 is closed here with what finished
    final = close_phase_4(run_id, settings, client, "cancelled", "cancelled")
    finished = sum(1 for r in final.task_results if not r.skipped) if final else 0
    final = final or state
    final.status = "cancelled"
    store.save(final)
    return Cancellation(run_id, previous, "cancelled", len(ids), finished)


def close_phase_4(run_id: str, settings: Settings, client: Any, status: str, why: str,
                  lost: Optional[dict[str, str]] = None) -> Optional[PhaseState]:
    """Phase 4's outcome from the scheduler's records, when its chord cannot deliver one.

    For a cancel, and for a chord broken by a part whose process was killed
    (the hard time limit): ``lost`` names those tasks with the reason, so they
    are reported failed rather than silently skipped.  None when phase 4 is not
    under way.  The scheduler keys are left to expire, never reset: a late
    duplicate may still complete into them.
    """
    from .models import TaskResult
    from .phases import collect_results, execution_result

    scheduler = DagScheduler(client, settings.key_prefix, run_id, settings.state_ttl_s)
    state = scheduler.state()
    if state is None:
        return None
    done = scheduler.results()
    agents = {t.task_id: t.agent for t in state.tasks_data}
    for task_id, error in (lost or {}).items():
        if task_id in agents and task_id not in done:
            done[task_id] = TaskResult(task_id=task_id, agent=agents[task_id], success=False, error=error)
    state.task_results = collect_results(state, done)
    result = execution_result(state, state.task_results, scheduler.started())
    result.success = False
    result.error = f"{why} ({len(done)} of {len(state.tasks_data)} tasks had finished)"
    state.record(result)
    state.status = status
    pipe = client.pipeline(transaction=False)
    for key in scheduler.keys.values():
        pipe.expire(key, scheduler.ttl_s)
    pipe.execute()
    return state


def lost_agent_tasks(message: str, ledger: RunLedger) -> dict[str, str]:
    """``{task_id: reason}`` for the agent tasks a chord error names (``Dependency <id> raised ...``)."""
    import re

    labels = ledger.tasks()
    lost = {}
    for celery_id, raised in re.findall(r"Dependency (\S+) raised (.+?)(?:$|;|\n)", message):
        label = labels.get(celery_id, "")
        if label.startswith("agent:"):
            reason = ("timed out: past its hard time limit, its worker process was killed"
                      if "TimeLimitExceeded" in raised else f"its worker process was lost: {raised}")
            lost[label.split(":", 1)[1]] = reason
    return lost


def clear_cancel(run_id: str, settings: Settings, client: Any) -> None:
    client.delete(Runtime(settings, client).cancel_key(run_id))


# ----------------------------------------------------------------------- resume
def pipeline_phases(state: PhaseState) -> list[int]:
    """The phases the run is made of: 2-4 always, 0 and 1 when it enabled or selected them."""
    cfg = state.phase_config
    return [n for n in ALL_PHASES
            if n >= 2 or n in state.selected_phases or (n == 0 and cfg.enable_context)
            or (n == 1 and cfg.enable_quorum)]


def remaining_phases(state: PhaseState, skip: list[int]) -> list[int]:
    """Every phase of the run after its last completed one, minus ``skip``.

    "After the last completed" rather than "not completed": a phase 0 that
    failed (non-critical, context turned off) is not re-run once 2 and 3 are
    done; a quorum FAIL re-runs the quorum and everything after it.
    """
    pipeline = pipeline_phases(state)
    completed = [n for n in pipeline if state.has_completed(ExecutionPhase.of(n))]
    last = max(completed, default=-1)
    return [n for n in pipeline if n > last and n not in skip]


def resume_state(stored: PhaseState, skip: list[int], config: Optional[DispatchConfig], log: Log,
                 force: bool = False) -> PhaseState:
    """The state to submit for ``dispatch resume``: same run id, saved phases kept, the rest to run."""
    from .runner import prepare_state

    run_id = stored.run_id
    if stored.status in ACTIVE and not force:
        raise UsageError(f"run {run_id} is {stored.status} (saved {stored.saved_at}): it may still be running on "
                         f"the workers. Cancel it first ('dispatch cancel {run_id}'), or resume with --force if "
                         f"its workers and client are gone")
    for number in skip:
        if number not in ALL_PHASES:
            raise UsageError(f"--skip-phases {number}: phases are numbered 0-{ALL_PHASES[-1]}")
    remaining = remaining_phases(stored, skip)
    if not remaining:
        done = [n for n in ALL_PHASES if stored.has_completed(ExecutionPhase.of(n))]
        raise UsageError(f"run {run_id} has no phase left to run (status {stored.status}; completed phases: "
                         f"{', '.join(map(str, done)) or 'none'})")
    keep_context = stored.has_completed(ExecutionPhase.CONTEXT_GATHERING)
    cfg = PhaseConfig(skip_phases=[n for n in ALL_PHASES if n not in remaining],
                      enable_context=0 in remaining or (stored.phase_config.enable_context and keep_context),
                      enable_quorum=1 in remaining or stored.phase_config.enable_quorum)
    config = config or DispatchConfig.model_validate(stored.settings)
    state = prepare_state(None, cfg, config, stored, log, run_id=run_id)
    # nothing saved is lost: results of phases not re-run stay as they were, and so does the start time
    for number in ALL_PHASES:
        previous = stored.result_for(ExecutionPhase.of(number))
        if number not in remaining and previous is not None:
            state.record(previous)
    if ExecutionPhase.PARALLEL_EXECUTION.number not in remaining:
        state.task_results = stored.task_results
    else:  # tasks that already succeeded keep their results and are not run (nor their side effects) again
        state.task_results = [r for r in stored.task_results if r.success]
        if state.task_results:
            log.line(f"Keeping {len(state.task_results)} succeeded task result(s) from the earlier attempt")
    state.started_at = stored.started_at or state.started_at
    return state
