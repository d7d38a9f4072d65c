"""The question put to model validators, and the reading of their answers.

Models are asked for a small JSON verdict; what comes back is read leniently
(code fences, prose around the object, ``"pass"`` in lower case, a score given as
a fraction) but never guessed: with neither a recommendation nor a score the
answer is unreadable and the validator abstains (``AnswerError``).
"""
from __future__ import annotations

import json
from typing import Any, Optional

from dispatch.models import DispatchInput
from dispatch.common.text import extract_json
from dispatch.quorum.base import AnswerError, Verdict

PROMPT_VERSION = 1  # part of the cache key: a changed question invalidates cached answers

SYSTEM_PROMPT = """\
You review task breakdowns before a pipeline runs each task as an AI agent, in parallel.
Decide whether the breakdown, carried out as written, accomplishes the user's request.
Judge: is it about the right subject; is anything the request needs missing; is any task
unrelated; are dependencies between tasks right; is each task specific enough for an agent.

Answer with one JSON object and nothing else:
{"alignment_score": <number 0-100>, "recommendation": "PASS" | "RETRY" | "FAIL",
 "missing_requirements": [<short, specific deficiencies; empty when none>]}
PASS: the breakdown accomplishes the request.
RETRY: the right direction, but deficient; missing_requirements says what to fix.
FAIL: the breakdown is for something else, or cannot work."""

NODE_TYPE_PROMPT = """
Some tasks carry input_data.node_type (an ONEX node type: Effect for I/O and side effects,
Compute for pure transformation, Reducer for aggregation and state, Orchestrator for
coordinating workflows). Also answer "correct_node_type": true or false, and when false
"expected_node_type": the type the task should have."""

VERDICT_SCHEMA: dict[str, Any] = {
    "title": "quorum_verdict",
    "type": "object",
    "properties": {
        "alignment_score": {"type": "number", "minimum": 0, "maximum": 100},
        "recommendation": {"type": "string", "enum": ["PASS", "RETRY", "FAIL"]},
        "missing_requirements": {"type": "array", "items": {"type": "string"}},
        "correct_node_type": {"type": "boolean"},
        "expected_node_type": {"type": "string"},
    },
    "required": ["alignment_score", "recommendation", "missing_requirements"],
}

RECOMMENDATIONS = ("PASS", "RETRY", "FAIL")


def has_node_types(request: DispatchInput) -> bool:
    return any(isinstance(t.input_data, dict) and t.input_data.get("node_type") for t in request.tasks)


def system_prompt(request: DispatchInput) -> str:
    return SYSTEM_PROMPT + (NODE_TYPE_PROMPT if has_node_types(request) else "")


def breakdown_json(request: DispatchInput) -> str:
    """The breakdown as the model sees it: every task field, unknown keys included."""
    return json.dumps([t.model_dump(mode="json") for t in request.tasks], indent=1, ensure_ascii=False)


def user_prompt(request: DispatchInput) -> str:
    asked = request.user_prompt.strip() or "(no request text was given; judge the breakdown on its own)"
    return f"User request:\n{asked}\n\nTask breakdown ({len(request.tasks)} tasks, JSON):\n{breakdown_json(request)}"


def parse_verdict(text: str, pass_score: float = 70.0, retry_score: float = 40.0) -> Verdict:
    """A ``Verdict`` from a model's answer, or ``AnswerError`` saying why there is none.

    Without a recommendation the score decides (>= ``pass_score`` PASS,
    >= ``retry_score`` RETRY, else FAIL).
    """
    try:
        data = extract_json(text)
    except ValueError as exc:
        raise AnswerError(f"unparseable answer: {exc}") from None
    score = _score(data.get("alignment_score"))
    raw_rec = data.get("recommendation", data.get("decision"))
    recommendation = raw_rec.strip().upper() if isinstance(raw_rec, str) else None
    if recommendation not in RECOMMENDATIONS:
        if score is None:
            reason = f"unknown recommendation {raw_rec!r}" if raw_rec is not None else "no recommendation"
            raise AnswerError(f"unparseable answer: {reason} and no alignment_score")
        recommendation = "PASS" if score >= pass_score else "RETRY" if score >= retry_score else "FAIL"
    deficiencies = _strings(data.get("missing_requirements", data.get("deficiencies")))
    if data.get("correct_node_type") is False:
        expected = data.get("expected_node_type")
        deficiencies.append(f"Node type should be {expected}" if isinstance(expected, str) and expected.strip()
                            else "Node type does not fit the task")
    confidence = _fraction(data.get("confidence"))
    if confidence is None:
        confidence = score / 100.0 if score is not None else 0.7
    return Verdict(recommendation=recommendation, alignment_score=score, confidence=round(confidence, 4),
                   deficiencies=deficiencies)


def _score(value: Any) -> Optional[float]:
    """0..100; a fraction (0 < x < 1) is read as a share, strings like "85" or "85%" are accepted."""
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if 0 < value < 1:
        value *= 100
    return max(0.0, min(100.0, value))


def _fraction(value: Any) -> Optional[float]:
    score = _score(value)
    return None if score is None else score / 100.0


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, dict):  # {"requirement": "..."} and the like
            item = next((v for v in item.values() if isinstance(v, str)), None)
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
    return out
