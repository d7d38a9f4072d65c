"""Phase 1, QUORUM_VALIDATION, as pure logic (no Celery).

Validators (``rules``, ``openai``, ``anthropic``; see ``VALIDATORS``) vote on
whether a task breakdown fits the user's request; ``run_quorum`` counts the
votes, retries with backoff, lets a planner revise the breakdown, and returns a
``QuorumResult`` plus the breakdown to run.  ``render_quorum_log`` prints the
guide's transcript from a result; ``quorum_stats`` keeps score over saved runs.
"""
from dispatch.quorum import llm_validators, rules  # noqa: F401 - registers the built-in kinds
from dispatch.quorum.base import VALIDATORS, AnswerError, Validator, Verdict, build_validators
from dispatch.quorum.cache import KeyValueCache, MemoryCache, vote_key
from dispatch.quorum.graph import graph_faults
from dispatch.quorum.planner import Planner, PlannerError
from dispatch.quorum.report import render_quorum_log
from dispatch.quorum.rules import check_breakdown
from dispatch.quorum.runner import QuorumOutcome, retry_delay, run_quorum
from dispatch.quorum.settings import history_size, reads_context, wants_history
from dispatch.quorum.stats import quorum_stats, render_stats, stats_json
from dispatch.quorum.voting import Tally, tally

__all__ = [
    "VALIDATORS", "AnswerError", "KeyValueCache", "MemoryCache", "Planner",
    "PlannerError", "QuorumOutcome", "Tally", "Validator", "Verdict", "build_validators", "check_breakdown",
    "graph_faults", "history_size", "quorum_stats", "reads_context", "render_quorum_log", "render_stats", "retry_delay",
    "run_quorum", "stats_json", "tally", "vote_key", "wants_history",
]
