"""Phase 1, QUORUM_VALIDATION: ask the quorum, retry on RETRY, report.

One attempt asks every configured validator at once (a thread each, so the
slowest bounds the attempt) and counts the votes (``voting``).  Then:

- PASS: done.  FAIL: done; the caller aborts the run (exit 1).
- RETRY: wait ``min(backoff_cap_s, backoff_base_s * 2**(k-1))`` before retry k,
  less a random share of up to ``backoff_jitter`` (a fraction, 0..1) of it
  (``common.backoff``, the formula every retry in dispatch uses), and ask again, up to ``max_retries`` times.  With a ``planner`` configured, the
  deficiencies first go to it and its revised breakdown (if it passes the graph
  checks) is what the retry validates.  Retries exhausted: the decision stays
  RETRY with the warning "Max retries exceeded"; the caller warns and goes on.
- Without a planner and with only deterministic validators (``rules``), a retry
  would see the same breakdown and return the same verdict, so none is made: the
  decision stays RETRY with a warning saying why.

Abstentions and the no-quorum policy.  A validator that errors, times out,
answers unreadably or sits behind an open circuit breaker abstains: it is not a
vote.  When the weight that answered is below ``min_answered_share`` the result
has ``quorum_reached=False`` and a "Quorum not reached" warning, and
``on_no_quorum`` applies:

- ``"warn"`` (default): the decision is the one the answered votes make (never
  upgraded to PASS; a PASS by a minority is reported as such, with the
  warning).  If nobody answered at all, the decision is RETRY: the quorum asks
  again after the backoff, and when retries run out the run warns and continues,
  as phase 0 does when context cannot be gathered.
- ``"fail"``: the attempt's decision is FAIL and the run aborts.

Breakers (``common.breaker``) are per provider endpoint, from the process-wide
``BREAKERS`` board unless one is passed; they open after ``quorum.breaker_failures`` (3)
consecutive failures and let a trial call through after
``quorum.breaker_cooldown_s`` (30).  An endpoint that answers it does not take
part of the request (a ``response_format`` it refuses: a configuration answer)
is up: its validator abstains, saying so, and the breaker counts a success.
Votes are cached (``cache``, TTL ``quorum.cache_ttl_s``); the cache is read on the
first attempt only, since a retry exists to get a fresh judgement, and every
fresh answer is written.  The same cache carries what model validators learn
about their endpoints (the structured-output form each accepts).

Tiers (``tiers``): each attempt asks the deterministic checks first (their FAIL
is final), then the lowest tier, and higher tiers only when the votes so far are
not decisive; the attempt records the tiers that voted, why each higher one was
asked, and who was not asked.  Weights (``records``): ``quorum.weights =
"learned"`` with ``history`` (recent saved runs) weighs each validator by how
often the runs' outcomes bore its votes out; ``weights_used`` says which.

Spend: each fresh vote carries its call's ``usage`` (priced from ``[prices]``; a
cached vote cost nothing and has none), the planner adds up its revisions
(``planner_usage``), and the result's ``usage`` is all of phase 1's calls: it
counts against the run's ``[budget]`` before phase 4 starts.  With the run's caps given (``cap``, a
``SpendCap``), the session also checks them between its rounds (before a higher tier is asked, before a
planner revision, before a retry; never mid-call): once a cap is reached it stops asking, keeps the
breakdown it has, and says so in a warning; phase 4 then starts nothing and the run pauses at that cap
(``dispatch resume --max-tokens ...`` goes on).
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from pydantic import ValidationError

from dispatch.common.spend import SpendCap, call_usage, describe, total
from dispatch.config import DispatchConfig, Price, QuorumOptions
from dispatch.errors import ConfigError
from dispatch.models import (DispatchInput, Escalation, PhaseState, QuorumAttempt, QuorumResult, TaskSpec,
                             ValidatorVote, ValidatorWeight)
from dispatch.common.backoff import backoff_delay
from dispatch.common.breaker import BREAKERS, BreakerBoard
from dispatch.common.providers import ProviderError
from dispatch.quorum.base import AnswerError, Validator, build_validators
from dispatch.quorum.cache import KeyValueCache, vote_key
from dispatch.quorum.planner import Planner, PlannerError, describe_change
from dispatch.quorum.records import breakdown_digest, configured_weights, learned_weights, vote_records
from dispatch.quorum.report import VALIDATING, attempt_body, retry_header, warning_lines
from dispatch.quorum.settings import QuorumSettings
from dispatch.quorum.tiers import base_tier, deterministic_fail, escalation, model_tiers
from dispatch.quorum.voting import Tally, tally

NO_QUORUM_POLICIES = ("warn", "fail")


@dataclass
class QuorumOutcome:
    result: QuorumResult
    tasks: list[TaskSpec]  # the breakdown to run: the input's, or the planner's last valid revision


def retry_delay(retry: int, options: QuorumOptions, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1-based), by ``quorum.backoff_*``."""
    return backoff_delay(retry - 1, options.backoff_base_s, options.backoff_cap_s, options.backoff_jitter, rng)


def run_quorum(request: DispatchInput, config: DispatchConfig, *, cache: Optional[KeyValueCache] = None,
               on_event: Optional[Callable[[str], None]] = None, sleep: Callable[[float], None] = time.sleep,
               rng: Optional[random.Random] = None, known_agents: Optional[set[str]] = None,
               breakers: Optional[BreakerBoard] = None,
               history: Optional[Sequence[PhaseState]] = None, cap: Optional[SpendCap] = None) -> QuorumOutcome:
    """Validate ``request``'s breakdown with the configured quorum (see the module docstring).

    ``on_event`` receives log lines as they happen (without the ``[DispatchRunner] ``
    prefix).  ``known_agents`` names the agents the run can resolve (default: the
    config's agents); the built-in kinds are always known.  ``history`` is the
    recent saved runs (the store's ``list_runs``) that ``quorum.weights = "learned"``
    learns from; without it the configured weights are used.  ``cap``: the run's budget, checked between
    rounds (the module docstring).  Raises ``ConfigError``
    for a bad validator or planner configuration.
    """
    options = config.quorum
    if options.on_no_quorum not in NO_QUORUM_POLICIES:
        raise ConfigError(f"quorum.on_no_quorum: must be one of {', '.join(NO_QUORUM_POLICIES)} "
                          f"(got {options.on_no_quorum!r})")
    settings = QuorumSettings.of(options)  # refuse bad settings before any validator is built
    validators = build_validators(config, known_agents)
    planner = None
    try:
        for validator in validators:
            validator.share_cache(cache)
        weights = choose_weights(validators, settings, history)
        if config.planner is not None:
            planner = Planner(config.planner, known_agents, list(config.agents), shared_cache=cache,
                              prices=config.prices)
        session = QuorumSession(validators, options, planner=planner, cache=cache,
                                breakers=breakers if breakers is not None else BREAKERS,
                                emit=on_event or (lambda line: None), sleep=sleep, rng=rng or random.Random(),
                                settings=settings, weights=weights, prices=config.prices, cap=cap)
        return session.run(request)
    finally:
        for validator in validators:
            validator.close()
        if planner is not None:
            planner.close()


def choose_weights(validators: list[Validator], settings: QuorumSettings,
                   history: Optional[Sequence[PhaseState]]) -> dict[str, ValidatorWeight]:
    """The weight each validator votes with (set on it), configured or learnt from ``history``."""
    if settings.weights != "learned" or history is None:
        return configured_weights(validators)
    weights = learned_weights(validators, vote_records(history), floor=settings.learned_floor,
                              min_samples=settings.learned_min_samples)
    for validator in validators:
        validator.weight = weights[validator.name].weight
    return weights


@dataclass
class AttemptVotes:
    """What one attempt asked and heard."""

    votes: list[ValidatorVote]
    counted: Tally
    tiers: list[int]
    escalations: list[Escalation]
    not_asked: list[str]


class QuorumSession:
    """One phase 1 run: attempts, votes, the planner loop, and the warnings collected on the way."""

    def __init__(self, validators: list[Validator], options: QuorumOptions, *, planner: Optional[Planner],
                 cache: Optional[KeyValueCache], breakers: BreakerBoard, emit: Callable[[str], None],
                 sleep: Callable[[float], None], rng: random.Random,
                 settings: Optional[QuorumSettings] = None,
                 weights: Optional[dict[str, ValidatorWeight]] = None,
                 prices: Optional[dict[str, Price]] = None, cap: Optional[SpendCap] = None) -> None:
        self.validators = validators
        self.cap = cap
        self.spent_votes = total([])  # every fresh vote's usage so far, all attempts and tiers
        self.stopped_at: Optional[str] = None  # the cap that stopped the asking
        self.prices = prices or {}  # [prices]: each vote's call is priced where it is made
        self.options = options
        self.planner = planner
        self.cache = cache if options.cache_ttl_s > 0 else None
        self.breakers = breakers
        self.emit = emit
        self.sleep = sleep
        self.rng = rng
        self.settings = settings or QuorumSettings.of(options)
        self.weights = weights or configured_weights(validators)
        self.warnings: list[str] = []
        self._said: set[str] = set()  # warnings already in the live log
        self._lock = threading.Lock()  # cache warnings come from voting threads

    # ------------------------------------------------------------ the loop
    def run(self, request: DispatchInput) -> QuorumOutcome:
        attempts: list[QuorumAttempt] = []
        max_retries = self.options.max_retries
        current = request
        number = 0
        while True:
            number += 1
            backoff = 0.0
            if number > 1:
                backoff = retry_delay(number - 1, self.options, self.rng)
                self._say(*retry_header(number, max_retries))
                if backoff > 0:
                    self.sleep(backoff)
            self._say(VALIDATING)
            asked = self.cast_votes(current, read_cache=number == 1)
            counted = asked.counted
            attempt = QuorumAttempt(attempt=number, decision=counted.decision, confidence=counted.confidence,
                                    deficiencies=counted.deficiencies, votes=asked.votes,
                                    answered_share=counted.answered_share, backoff_s=backoff, tiers=asked.tiers,
                                    escalations=asked.escalations, not_asked=asked.not_asked)
            attempts.append(attempt)
            self._say(*attempt_body(attempt))
            if counted.decision != "RETRY":
                break
            if number > max_retries:
                self._warn(f"Max retries exceeded ({max_retries}): continuing with the current breakdown")
                break
            if self.budget_reached():  # before a revision and a retry, each a call more
                break
            if self.planner is not None:
                current = self.replan(current, counted.deficiencies, number)
            elif all(v.deterministic for v in self.validators):
                self._warn("Retries skipped: the quorum is deterministic and no planner is configured "
                           "to revise the breakdown; continuing with the current breakdown")
                break

        last = attempts[-1]
        final = self.count(last.votes)  # recount for the final attempt's quorum facts
        warnings = final.warnings + self.warnings
        learned = any(w.source == "learned" for w in self.weights.values())
        result = QuorumResult(decision=last.decision, confidence=last.confidence, deficiencies=last.deficiencies,
                              votes=last.votes, attempts=attempts, retry_count=len(attempts) - 1,
                              answered_share=last.answered_share, quorum_reached=final.quorum_reached,
                              warnings=warnings, calls_saved=sum(len(a.not_asked) for a in attempts),
                              weights="learned" if learned else "configured", weights_used=self.weights,
                              breakdown_digest=breakdown_digest(current.tasks))
        planner_usage = self.planner.usage if self.planner is not None and self.planner.usage.calls else None
        spent = total([*(v.usage for a in attempts for v in a.votes), planner_usage])
        result.planner_usage, result.usage = planner_usage, spent if spent.calls else None
        # Warnings said live (planner notes) are not repeated; the rest close the log.
        self.emit_lines(warning_lines(final.warnings + [w for w in self.warnings if w not in self._said]))
        return QuorumOutcome(result=result, tasks=list(current.tasks))

    def replan(self, request: DispatchInput, deficiencies: list[str], number: int) -> DispatchInput:
        """The planner's revision of ``request``, or ``request`` itself when the revision is unusable."""
        assert self.planner is not None
        try:
            tasks = self.planner.regenerate(request, deficiencies)
        except (PlannerError, ProviderError) as exc:
            self._warn(f"Planner could not revise the breakdown after attempt {number}: {exc}; "
                       f"keeping the previous breakdown", live=True)
            return request
        self._warn(f"Breakdown revised by the planner after attempt {number}: "
                   f"{describe_change(request.tasks, tasks)}", live=True)
        return request.model_copy(update={"tasks": tasks})

    # ------------------------------------------------------------- voting
    def count(self, votes: list[ValidatorVote]) -> Tally:
        """``tally``, with a deterministic FAIL final whatever the models said."""
        counted = tally(votes, self.options)
        vetoes = deterministic_fail(votes, self.validators)
        if vetoes and counted.decision != "FAIL":
            total = sum(max(v.weight, 0.0) for v in votes)
            counted.decision = "FAIL"
            counted.confidence = round(sum(v.weight * (v.confidence or 0.0) for v in vetoes) / total, 4) \
                if total > 0 else 0.0
        return counted

    def cast_votes(self, request: DispatchInput, read_cache: bool) -> AttemptVotes:
        """The votes of one attempt, tier by tier (see ``tiers``), in configuration order."""
        order = {v.name: i for i, v in enumerate(self.validators)}
        checks = [v for v in self.validators if v.deterministic]
        votes = self.ask(checks, request, read_cache)
        escalations: list[Escalation] = []
        not_asked: list[str] = []
        tiers_left = model_tiers(self.validators)
        if deterministic_fail(votes, self.validators):
            not_asked = [v.name for _, group in tiers_left for v in group]
            tiers_left = []
        lowest = base_tier(self.validators)
        for index, (tier, group) in enumerate(tiers_left):
            if tier > lowest:
                if self.budget_reached():
                    not_asked = [v.name for _, later in tiers_left[index:] for v in later]
                    break
                reason = escalation(votes, self.count(votes), tier, self.options.min_answered_share,
                                    self.settings.escalate_below)
                if reason is None:
                    not_asked = [v.name for _, later in tiers_left[index:] for v in later]
                    break
                escalations.append(reason)
            votes += self.ask(group, request, read_cache)
        votes.sort(key=lambda vote: order[vote.validator])
        asked = {vote.validator for vote in votes}
        tiers = sorted({v.tier for v in self.validators if v.name in asked})
        return AttemptVotes(votes=votes, counted=self.count(votes), tiers=tiers, escalations=escalations,
                            not_asked=not_asked)

    def ask(self, validators: list[Validator], request: DispatchInput, read_cache: bool) -> list[ValidatorVote]:
        """The votes of ``validators``, asked at once; one past its own deadline abstains."""
        if not validators:
            return []
        pool = ThreadPoolExecutor(max_workers=len(validators), thread_name_prefix="quorum")
        started = time.perf_counter()
        try:
            futures = [pool.submit(self.cast_one, v, request, read_cache) for v in validators]
            for validator, future in sorted(zip(validators, futures), key=lambda pair: pair[0].deadline_s):
                remaining = started + validator.deadline_s - time.perf_counter()
                wait([future], timeout=max(remaining, 0.0))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a stuck call must not hold the phase
        votes = []
        for validator, future in zip(validators, futures):
            if future.done():
                votes.append(future.result())
            else:
                votes.append(self._vote(validator, error=f"no answer within {validator.deadline_s:g}s",
                                        latency_ms=(time.perf_counter() - started) * 1000))
        self.spent_votes = total([self.spent_votes, *(v.usage for v in votes)])
        return votes

    def budget_reached(self) -> bool:
        """Whether the run's caps are reached by what was spent before phase 1 and what it spent so far
        (votes, planner); the first time, the warning says so and the asking stops."""
        if self.cap is None:
            return False
        if self.stopped_at is None:
            planner = self.planner.usage if self.planner is not None else None
            spent = total([self.spent_votes, planner])
            cap = self.cap.reached(spent)
            if cap is None:
                return False
            self.stopped_at = cap
            shown = describe(self.cap.spent_before + spent) or "nothing"
            self._warn(f"Budget: {cap} reached ({shown} spent so far): the quorum stopped asking and "
                       f"keeps the current breakdown", live=True)
        return True

    def cast_one(self, validator: Validator, request: DispatchInput, read_cache: bool) -> ValidatorVote:
        """One validator's vote; never raises (a failure is an abstention that says why)."""
        started = time.perf_counter()
        elapsed = lambda: (time.perf_counter() - started) * 1000  # noqa: E731
        key = vote_key(request, validator.fingerprint()) if self.cache is not None and validator.cacheable else None
        if key and read_cache:
            hit = self._cache_get(key)
            if hit is not None:
                try:
                    return ValidatorVote.model_validate({**hit, "validator": validator.name, "kind": validator.kind,
                                                         "weight": validator.weight, "tier": validator.tier,
                                                         "cached": True, "latency_ms": elapsed(), "error": None,
                                                         # a cached vote costs no call
                                                         "input_tokens": 0, "output_tokens": 0, "usage": None})
                except ValidationError:
                    pass  # a foreign or stale entry: ask again
        breaker = (self.breakers.get(validator.breaker_key, self.settings.breaker_failures,
                                     self.settings.breaker_cooldown_s)
                   if validator.breaker_key else None)
        if breaker is not None and not breaker.allow():
            return self._vote(validator, error="circuit open", latency_ms=elapsed())
        try:
            verdict = validator.validate(request)
        except (AnswerError, ProviderError) as exc:
            healthy = isinstance(exc, AnswerError) or exc.configuration  # it answered: its endpoint is up
            if breaker is not None:
                breaker.record_success() if healthy else breaker.record_failure()
            return self._vote(validator, error=str(exc), latency_ms=elapsed())
        except Exception as exc:  # noqa: BLE001 - any failure is an abstention, recorded
            if breaker is not None:
                breaker.record_failure()
            return self._vote(validator, error=f"{type(exc).__name__}: {exc}", latency_ms=elapsed())
        if breaker is not None:
            breaker.record_success()
        vote = ValidatorVote(validator=validator.name, kind=validator.kind, weight=validator.weight,
                             recommendation=verdict.recommendation, alignment_score=verdict.alignment_score,
                             confidence=verdict.confidence, deficiencies=verdict.deficiencies,
                             latency_ms=round(elapsed(), 3), tier=validator.tier,
                             input_tokens=verdict.input_tokens, output_tokens=verdict.output_tokens,
                             json_mode=verdict.json_mode)
        if verdict.input_tokens is not None or verdict.output_tokens is not None:
            model = validator.options.get("model") if isinstance(validator.options, dict) else None
            vote.usage = call_usage(model if isinstance(model, str) else None, verdict.input_tokens,
                                    verdict.output_tokens, self.prices)
        if key:
            self._cache_set(key, vote.model_dump(mode="json", exclude={"cached", "latency_ms", "error", "usage"}))
        return vote

    @staticmethod
    def _vote(validator: Validator, *, error: str, latency_ms: float) -> ValidatorVote:
        return ValidatorVote(validator=validator.name, kind=validator.kind, weight=validator.weight,
                             recommendation=None, error=error, latency_ms=round(latency_ms, 3), tier=validator.tier)

    # ------------------------------------------------------------ helpers
    def _cache_get(self, key: str) -> Optional[dict]:
        try:
            return self.cache.get(key) if self.cache is not None else None
        except Exception as exc:  # noqa: BLE001 - a cache outage must not cost the vote
            self._warn(f"Vote cache unavailable: {type(exc).__name__}: {exc}")
            return None

    def _cache_set(self, key: str, value: dict) -> None:
        try:
            if self.cache is not None:
                self.cache.set(key, value, self.options.cache_ttl_s)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"Vote cache unavailable: {type(exc).__name__}: {exc}")

    def _warn(self, message: str, live: bool = False) -> None:
        with self._lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
            if live:
                self._said.add(message)
        if live:
            self._say(*warning_lines([message]))

    def _say(self, *lines: str) -> None:
        self.emit_lines(list(lines))

    def emit_lines(self, lines: list[str]) -> None:
        for line in lines:
            try:
                self.emit(line)
            except Exception:  # noqa: BLE001 - a broken log sink must not change the verdict
                pass
