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
``quorum.breaker_cooldown_s`` (30).  Votes are cached (``cache``, TTL
``quorum.cache_ttl_s``); the cache is read on the first attempt only, since a
retry exists to get a fresh judgement, and every fresh answer is written.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional

from pydantic import ValidationError

from dispatch.config import DispatchConfig, QuorumOptions
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput, QuorumAttempt, QuorumResult, TaskSpec, ValidatorVote
from dispatch.common.backoff import backoff_delay
from dispatch.common.breaker import BREAKERS, DEFAULT_COOLDOWN_S, DEFAULT_FAILURE_THRESHOLD, BreakerBoard
from dispatch.common.providers import ProviderError
from dispatch.quorum.base import AnswerError, Validator, build_validators
from dispatch.quorum.cache import KeyValueCache, vote_key
from dispatch.quorum.planner import Planner, PlannerError, describe_change
from dispatch.quorum.report import VALIDATING, attempt_body, retry_header, warning_lines
from dispatch.quorum.voting import tally

NO_QUORUM_POLICIES = ("warn", "fail")


@dataclass
class QuorumOutcome:
    result: QuorumResult
    tasks: list[TaskSpec]  # the breakdown to run: the input's, or the planner's last valid revision


def retry_delay(retry: int, options: QuorumOptions, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1-based), by ``quorum.backoff_*``."""
    return backoff_delay(retry - 1, options.backoff_base_s, options.backoff_cap_s, options.backoff_jitter, rng)


def breaker_settings(options: QuorumOptions) -> tuple[int, float]:
    """``quorum.breaker_failures`` (>= 1) and ``quorum.breaker_cooldown_s`` (>= 0) from the config's extras."""
    extra = options.model_extra or {}
    failures = extra.get("breaker_failures", DEFAULT_FAILURE_THRESHOLD)
    cooldown = extra.get("breaker_cooldown_s", DEFAULT_COOLDOWN_S)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise ConfigError(f"quorum.breaker_failures: must be a positive integer (got {failures!r})")
    if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or cooldown < 0:
        raise ConfigError(f"quorum.breaker_cooldown_s: must be a number of seconds (got {cooldown!r})")
    return failures, float(cooldown)


def run_quorum(request: DispatchInput, config: DispatchConfig, *, cache: Optional[KeyValueCache] = None,
               on_event: Optional[Callable[[str], None]] = None, sleep: Callable[[float], None] = time.sleep,
               rng: Optional[random.Random] = None, known_agents: Optional[set[str]] = None,
               breakers: Optional[BreakerBoard] = None) -> QuorumOutcome:
    """Validate ``request``'s breakdown with the configured quorum (see the module docstring).

    ``on_event`` receives log lines as they happen (without the ``[DispatchRunner] ``
    prefix).  ``known_agents`` names the agents the run can resolve (default: the
    config's agents); the built-in kinds are always known.  Raises ``ConfigError``
    for a bad validator or planner configuration.
    """
    options = config.quorum
    if options.on_no_quorum not in NO_QUORUM_POLICIES:
        raise ConfigError(f"quorum.on_no_quorum: must be one of {', '.join(NO_QUORUM_POLICIES)} "
                          f"(got {options.on_no_quorum!r})")
    breaker_settings(options)  # refuse bad settings before any validator is built
    validators = build_validators(config, known_agents)
    planner = None
    try:
        if config.planner is not None:
            planner = Planner(config.planner, known_agents, list(config.agents))
        session = QuorumSession(validators, options, planner=planner, cache=cache,
                                breakers=breakers if breakers is not None else BREAKERS,
                                emit=on_event or (lambda line: None), sleep=sleep, rng=rng or random.Random())
        return session.run(request)
    finally:
        for validator in validators:
            validator.close()
        if planner is not None:
            planner.close()


class QuorumSession:
    """One phase 1 run: attempts, votes, the planner loop, and the warnings collected on the way."""

    def __init__(self, validators: list[Validator], options: QuorumOptions, *, planner: Optional[Planner],
                 cache: Optional[KeyValueCache], breakers: BreakerBoard, emit: Callable[[str], None],
                 sleep: Callable[[float], None], rng: random.Random) -> None:
        self.validators = validators
        self.options = options
        self.planner = planner
        self.cache = cache if options.cache_ttl_s > 0 else None
        self.breakers = breakers
        self.emit = emit
        self.sleep = sleep
        self.rng = rng
        self.breaker_failures, self.breaker_cooldown_s = breaker_settings(options)
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
            votes = self.cast_votes(current, read_cache=number == 1)
            counted = tally(votes, self.options)
            attempt = QuorumAttempt(attempt=number, decision=counted.decision, confidence=counted.confidence,
                                    deficiencies=counted.deficiencies, votes=votes,
                                    answered_share=counted.answered_share, backoff_s=backoff)
            attempts.append(attempt)
            self._say(*attempt_body(attempt))
            if counted.decision != "RETRY":
                break
            if number > max_retries:
                self._warn(f"Max retries exceeded ({max_retries}): continuing with the current breakdown")
                break
            if self.planner is not None:
                current = self.replan(current, counted.deficiencies, number)
            elif all(v.deterministic for v in self.validators):
                self._warn("Retries skipped: the quorum is deterministic and no planner is configured "
                           "to revise the breakdown; continuing with the current breakdown")
                break

        last = attempts[-1]
        final = tally(last.votes, self.options)  # recount for the final attempt's quorum facts
        warnings = final.warnings + self.warnings
        result = QuorumResult(decision=last.decision, confidence=last.confidence, deficiencies=last.deficiencies,
                              votes=last.votes, attempts=attempts, retry_count=len(attempts) - 1,
                              answered_share=last.answered_share, quorum_reached=final.quorum_reached,
                              warnings=warnings)
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
    def cast_votes(self, request: DispatchInput, read_cache: bool) -> list[ValidatorVote]:
        """Every validator's vote, in configuration order; one past its own deadline abstains."""
        pool = ThreadPoolExecutor(max_workers=len(self.validators), thread_name_prefix="quorum")
        started = time.perf_counter()
        try:
            futures = [pool.submit(self.cast_one, v, request, read_cache) for v in self.validators]
            for validator, future in sorted(zip(self.validators, futures), key=lambda pair: pair[0].deadline_s):
                remaining = started + validator.deadline_s - time.perf_counter()
                wait([future], timeout=max(remaining, 0.0))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a stuck call must not hold the phase
        votes = []
        for validator, future in zip(self.validators, futures):
            if future.done():
                votes.append(future.result())
            else:
                votes.append(self._vote(validator, error=f"no answer within {validator.deadline_s:g}s",
                                        latency_ms=(time.perf_counter() - started) * 1000))
        return votes

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
                                                         "weight": validator.weight, "cached": True,
                                                         "latency_ms": elapsed(), "error": None})
                except ValidationError:
                    pass  # a foreign or stale entry: ask again
        breaker = (self.breakers.get(validator.breaker_key, self.breaker_failures, self.breaker_cooldown_s)
                   if validator.breaker_key else None)
        if breaker is not None and not breaker.allow():
            return self._vote(validator, error="circuit open", latency_ms=elapsed())
        try:
            verdict = validator.validate(request)
        except AnswerError as exc:  # the provider answered: it is healthy
            if breaker is not None:
                breaker.record_success()
            return self._vote(validator, error=str(exc), latency_ms=elapsed())
        except Exception as exc:  # noqa: BLE001 - any failure is an abstention, recorded
            if breaker is not None:
                breaker.record_failure()
            message = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
            return self._vote(validator, error=message, latency_ms=elapsed())
        if breaker is not None:
            breaker.record_success()
        vote = ValidatorVote(validator=validator.name, kind=validator.kind, weight=validator.weight,
                             recommendation=verdict.recommendation, alignment_score=verdict.alignment_score,
                             confidence=verdict.confidence, deficiencies=verdict.deficiencies,
                             latency_ms=round(elapsed(), 3))
        if key:
            self._cache_set(key, vote.model_dump(mode="json", exclude={"cached", "latency_ms", "error"}))
        return vote

    @staticmethod
    def _vote(validator: Validator, *, error: str, latency_ms: float) -> ValidatorVote:
        return ValidatorVote(validator=validator.name, kind=validator.kind, weight=validator.weight,
                             recommendation=None, error=error, latency_ms=round(latency_ms, 3))

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
