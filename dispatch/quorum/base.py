"""What a validator is, and how the configured quorum is built.

A validator judges one breakdown and returns a ``Verdict``, or raises: any
exception makes it abstain (the runner records why), because a validator that
could not answer has no opinion on the breakdown.  New kinds register with
``@VALIDATORS.register("kind")`` and are configured as
``[validators.<name>] kind = "...", weight = ..., tier = ..., <options>``.

``tier`` (an integer, default 0) is the validator's escalation tier: tier 0
(``rules``, cheap models) votes first, higher tiers (strong models) only when the
lower ones are not decisive (``quorum.tiers``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput, Recommendation
from dispatch.common.registry import Registry

DEFAULT_VALIDATORS = {"rules": ComponentConfig(kind="rules")}


class AnswerError(ValueError):
    """A validator got an answer it could not read: it abstains, its provider is healthy."""


@dataclass
class Verdict:
    recommendation: Recommendation
    alignment_score: Optional[float]  # 0..100
    confidence: float  # 0..1
    deficiencies: list[str] = field(default_factory=list)
    # what the model call cost and how it was asked (model validators; recorded on the vote)
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    json_mode: Optional[str] = None


class Validator:
    """Base class: one configured validator (name, weight, options)."""

    kind: str = ""
    deterministic = False  # the same breakdown always gets the same verdict
    cacheable = True  # worth a cache entry (a remote call)

    def __init__(self, name: str, component: ComponentConfig, config: DispatchConfig,
                 known_agents: Optional[set[str]] = None) -> None:
        self.name = name
        self.weight = float(component.weight)  # learned weights replace it for one run
        self.configured_weight = self.weight
        if self.weight < 0:
            raise ConfigError(f"validators.{name}.weight: must not be negative")
        self.options: dict[str, Any] = component.options
        self.tier = self.options.get("tier", 0)
        if isinstance(self.tier, bool) or not isinstance(self.tier, int) or self.tier < 0:
            raise ConfigError(f"validators.{name}.tier: must be a whole number from 0 (got {self.tier!r})")
        self.config = config
        self.known_agents = known_agents

    def validate(self, request: DispatchInput) -> Verdict:
        raise NotImplementedError

    @property
    def breaker_key(self) -> Optional[str]:
        """Validators sharing a key share a circuit breaker (None: no breaker)."""
        return None

    @property
    def deadline_s(self) -> float:
        """How long the runner waits for this validator before counting it as abstained."""
        return 60.0

    def fingerprint(self) -> dict[str, Any]:
        """What the verdict depends on besides the breakdown (the cache key's half)."""
        return {"name": self.name, "kind": self.kind, "weight": self.configured_weight, "options": self.options}

    def share_cache(self, cache: Any) -> None:
        """The cluster's key-value cache (the vote cache's store), for what a validator learns about its
        endpoint (model validators: the structured-output form it accepts).  Default: nothing to share."""

    def close(self) -> None:
        """Release connections; called once the quorum is over."""


VALIDATORS: Registry[Validator] = Registry("validator")


def build_validators(config: DispatchConfig, known_agents: Optional[set[str]] = None) -> list[Validator]:
    """The configured quorum, or the lone ``rules`` validator when none is configured.

    Raises ``ConfigError`` naming ``validators.<name>`` for an unknown kind or bad options.
    """
    components = config.validators or DEFAULT_VALIDATORS
    built: list[Validator] = []
    for name, component in components.items():
        try:
            cls = VALIDATORS.get(component.kind)
            built.append(cls(name, component, config, known_agents))
        except ConfigError as exc:
            for validator in built:
                validator.close()
            message = str(exc)
            raise ConfigError(message if message.startswith("validators.") else f"validators.{name}: {message}") from None
    if not any(v.weight > 0 for v in built):
        raise ConfigError("validators: at least one validator needs a positive weight")
    return built
