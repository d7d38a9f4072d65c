"""A warning when the Redis broker's visibility timeout is shorter than an agent's time limit.

Why: kombu's Redis transport hands a late-acked message that stayed unacked
for ``visibility_timeout`` to another worker, even when its task is still
running (or its worker is paused, e.g. SIGSTOP, a VM suspended): that task
then runs twice.  Agents are late-acked, so the timeout must exceed the longest
agent time limit (its hard limit, past which the task is killed).  Checked as
the CLI submits a run and as a worker starts (against the default run timeout
and the agents of its ``DISPATCH_CONFIG``); said, never refused.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

from celery import signals

from dispatch.agents import task_timeout
from dispatch.config import ComponentConfig, DispatchConfig, Settings
from dispatch.models import PhaseState, RunConfig
from dispatch.pipeline.plan import agent_configs
from dispatch.tasks.agents import HARD_LIMIT_GRACE_S, SOFT_LIMIT_GRACE_S

logger = logging.getLogger(__name__)


def on_redis(settings: Settings) -> bool:
    return not settings.embedded and str(settings.broker_url).startswith(("redis://", "rediss://"))


def hard_limit(component: ComponentConfig, run_timeout_s: float) -> float:
    """The Celery hard time limit an agent task of this component gets (``dispatch.tasks.agents``)."""
    return task_timeout(component, run_timeout_s) + SOFT_LIMIT_GRACE_S + HARD_LIMIT_GRACE_S


def message(settings: Settings, longest_s: float, whose: str) -> Optional[str]:
    if longest_s <= settings.visibility_timeout_s:
        return None
    return (f"the Redis broker's visibility timeout ({settings.visibility_timeout_s}s, "
            f"DISPATCH_VISIBILITY_TIMEOUT_S) is shorter than the longest agent time limit of {whose} "
            f"({longest_s:g}s): a task running (or its worker paused) longer than the timeout is delivered "
            f"again and runs twice; set DISPATCH_VISIBILITY_TIMEOUT_S above it on workers and clients")


def run_warning(settings: Settings, state: PhaseState) -> Optional[str]:
    """For ``dispatch`` submitting ``state``: its agents' longest hard limit against the timeout."""
    if not on_redis(settings) or 4 not in state.selected_phases or not state.tasks_data:
        return None
    one_per_agent = list({t.agent: t for t in state.tasks_data}.values())
    try:
        components = agent_configs(one_per_agent, state.config).values()
    except Exception:  # noqa: BLE001 - an unknown agent is reported by planning, not here
        return None
    return message(settings, longest(components, state.run_config.timeout_seconds), "this run")


def longest(components: Iterable[ComponentConfig], run_timeout_s: float) -> float:
    return max((hard_limit(c, run_timeout_s) for c in components), default=hard_limit(ComponentConfig(kind="echo"),
                                                                                       run_timeout_s))


def worker_warning(settings: Settings) -> Optional[str]:
    """For a worker starting: the default run timeout and its config file's agents."""
    if not on_redis(settings):
        return None
    default = RunConfig().timeout_seconds
    components: list[ComponentConfig] = []
    try:
        components = list(DispatchConfig.load(settings.config_file).agents.values()) if settings.config_file else []
    except Exception:  # noqa: BLE001 - a bad config file is reported where it is used
        pass
    return message(settings, longest(components, default), "the default run timeout and the worker's agents")


def install_on_workers() -> None:
    """Connect the handlers (``create_app`` calls this for each app it builds; Celery keeps one
    connection per ``dispatch_uid``, so calling it again connects nothing twice)."""
    signals.worker_ready.connect(_on_worker_ready, weak=False,
                                 dispatch_uid="dispatch.runtime.visibility._on_worker_ready")


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = getattr(getattr(sender, "app", None), "dispatch_settings", None)
    warning = worker_warning(settings) if settings is not None else None
    if warning:
        logger.warning(warning)
