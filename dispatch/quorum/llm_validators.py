"""Model validators: ``openai`` (any chat-completions endpoint) and ``anthropic``.

Both ask the same question (``prompt``) through the shared provider client; they
differ only in the wire protocol.  Options are the client's (``base_url``,
``model``, ``api_key_env``, ``timeout_s``, ``temperature`` default 0,
``max_tokens``, ``json_mode``, ``headers``) plus ``pass_score`` / ``retry_score``,
used only when an answer carries a score but no recommendation.  ``json_mode``
defaults to ``"auto"``: the verdict schema goes in the strongest form the endpoint
accepts (a llama.cpp server gets it inside ``json_object``), learnt once per
endpoint and shared through the quorum's cache; the vote records the form and
the tokens the call used.
"""
from __future__ import annotations

from typing import Any, Optional

from dispatch.errors import ConfigError
from dispatch.models import DispatchInput
from dispatch.common.providers import make_client
from dispatch.quorum.base import VALIDATORS, Validator, Verdict
from dispatch.quorum.prompt import PROMPT_VERSION, VERDICT_SCHEMA, parse_verdict, system_prompt, user_prompt


class LLMValidator(Validator):
    provider = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = {"temperature": 0.0, **self.options, "provider": self.provider}
        try:
            self.client = make_client(options)
        except ConfigError as exc:
            raise ConfigError(f"validators.{self.name}.{exc}") from None
        self.pass_score = self._score_option("pass_score", 70.0)
        self.retry_score = self._score_option("retry_score", 40.0)

    def _score_option(self, key: str, default: float) -> float:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            self.client.close()
            raise ConfigError(f"validators.{self.name}.{key}: must be a number from 0 to 100")
        return float(value)

    @property
    def breaker_key(self) -> Optional[str]:
        # One breaker per endpoint: every validator on a dead server should stop calling it.
        return f"{self.provider}:{self.client.options.base_url}"

    @property
    def deadline_s(self) -> float:
        # httpx applies timeout_s to connect and to each read; allow both, plus a margin.
        return 2 * self.client.options.timeout_s + 1.0

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "prompt_version": PROMPT_VERSION}

    def validate(self, request: DispatchInput) -> Verdict:
        reply = self.client.complete(system_prompt(request), [{"role": "user", "content": user_prompt(request)}],
                                     json_schema=VERDICT_SCHEMA)
        verdict = parse_verdict(reply.text, self.pass_score, self.retry_score)
        verdict.input_tokens, verdict.output_tokens = reply.input_tokens, reply.output_tokens
        verdict.json_mode = reply.json_mode
        return verdict

    def share_cache(self, cache: Any) -> None:
        self.client.shared_cache = cache

    def close(self) -> None:
        self.client.close()


@VALIDATORS.register("openai")
class OpenAIValidator(LLMValidator):
    provider = "openai"


@VALIDATORS.register("anthropic")
class AnthropicValidator(LLMValidator):
    provider = "anthropic"
