"""Every Redis key dispatch writes, in one place, each under the deployment's ``DISPATCH_KEY_PREFIX``.

A key's name is its documentation: what it holds is said beside it.  Nothing
else in the code builds a key name by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

# The phase-4 scheduler's keys of one run (see ``dispatch.store.scheduler``).
DAG_KEYS = ("remaining", "ready", "inflight", "results", "payloads", "dependents", "depends", "priority",
            "outbox", "claims", "state", "limit", "started", "reported", "closed", "finished",
            # the run's budget (dispatch.pipeline.spend): its caps and default estimates, what is spent and
            # reserved, each task's agent and own estimate, each agent's finished spend, the cap that paused it
            "budget", "spent", "reserved", "estimates", "agent_spend", "paused",
            # the stall watchdog (dispatch.store.stall): the run's chords (group id -> callback) and its lock
            "chords", "watchdog")


@dataclass(frozen=True)
class Keys:
    prefix: str

    def run(self, run_id: str) -> str:
        """A run's ``PhaseState`` JSON."""
        return f"{self.prefix}:run:{run_id}"

    def run_results(self, run_id: str) -> str:
        """Hash of a large run's task results, zlib chunks (``dispatch.store.state``)."""
        return f"{self.prefix}:run:{run_id}:results"

    def run_parts(self, run_id: str) -> str:
        """Hash of a very large run's tasks, plan and task contexts, zlib chunks (``dispatch.store.state``)."""
        return f"{self.prefix}:run:{run_id}:parts"

    @property
    def runs(self) -> str:
        """Sorted set of run ids by save time: the run history."""
        return f"{self.prefix}:runs"

    def cancel(self, run_id: str) -> str:
        """Present while the run is cancelled."""
        return f"{self.prefix}:cancel:{run_id}"

    def ledger(self, run_id: str) -> str:
        """Hash of Celery task id -> ``phase_N`` / ``agent:<task_id>``: what the run has sent."""
        return f"{self.prefix}:tasks:{run_id}"

    def phases(self, run_id: str) -> str:
        """Hash of Celery task id -> ``phase_N``: a run's phase tasks, kept with its state (``wait``
        finds them there); the agent tasks' entries (``ledger``) go when phase 4 closes."""
        return f"{self.prefix}:phases:{run_id}"

    def progress(self, run_id: str) -> str:
        """Phase 4's Celery id and task count: where its progress is reported."""
        return f"{self.prefix}:progress:{run_id}"

    def limits(self, run_id: str) -> str:
        """Hash of task id -> its timeout, which sets its Celery time limits."""
        return f"{self.prefix}:limits:{run_id}"

    def dag(self, run_id: str) -> dict[str, str]:
        """The scheduler's keys of a run, by name."""
        return {name: f"{self.prefix}:dag:{run_id}:{name}" for name in DAG_KEYS}

    def cache(self, key: str) -> str:
        """The quorum's result cache."""
        return f"{self.prefix}:cache:{key}"

    def provider_rate(self, name: str) -> str:
        """Hash of one provider's limiter state (``dispatch.store.limiter``): when its next request
        and its next token may go (GCRA, ms) and the Retry-After hold-off."""
        return f"{self.prefix}:provider:{name}"

    def provider_leases(self, name: str) -> str:
        """Sorted set of lease id -> expiry (ms): the calls in flight to one provider (``max_concurrency``)."""
        return f"{self.prefix}:provider-leases:{name}"
