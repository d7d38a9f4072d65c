"""A small JSON Schema checker for the ``llm`` kind's ``output_schema``.

``jsonschema`` is not a dependency, and structured output needs only the common
core: ``type``, ``enum``, ``const``, ``required``, ``properties``,
``additionalProperties``, ``items``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, ``pattern``, ``minimum``/``maximum``,
``exclusiveMinimum``/``exclusiveMaximum``, ``anyOf``, ``oneOf``, ``allOf``.
Other keywords (``$ref``, ``format``, ...) are ignored, never guessed at.
Errors name the path of each fault (``$.files[2].path: expected string, got integer``)
so a repair request to the model can say exactly what to fix.
"""
from __future__ import annotations

import re
from typing import Any

from dispatch.common.text import clip
from dispatch.errors import ConfigError

_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
MAX_ERRORS = 20


def check_schema(schema: Any, where: str) -> None:
    """Refuse a schema this checker would misread (at config time)."""
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: must be a JSON Schema object")
    for path, node in _walk(schema, "$"):
        types = node.get("type")
        for name in (types if isinstance(types, list) else [types] if types is not None else []):
            if name not in _TYPES:
                raise ConfigError(f"{where}: {path}.type: unknown type {name!r}")
        if "pattern" in node:
            try:
                re.compile(node["pattern"])
            except (re.error, TypeError) as exc:
                raise ConfigError(f"{where}: {path}.pattern: {exc}") from None


def validate(value: Any, schema: dict) -> list[str]:
    """Every fault of ``value`` against ``schema`` (empty when it conforms)."""
    errors: list[str] = []
    _check(value, schema, "$", errors)
    return errors[:MAX_ERRORS]


def _check(value: Any, schema: Any, path: str, errors: list[str]) -> None:
    if not isinstance(schema, dict):
        if schema is False:
            errors.append(f"{path}: not allowed")
        return
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in allowed):
            errors.append(f"{path}: expected {' or '.join(allowed)}, got {_type_name(value)}")
            return
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        errors.append(f"{path}: {clip(repr(value), 80)} is not one of {clip(repr(schema['enum']), 80)}")
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{path}: must be {clip(repr(schema['const']), 80)}")
    for keyword, options in (("anyOf", 1), ("oneOf", 1)):
        if keyword in schema:
            passing = sum(1 for sub in schema[keyword] if not validate(value, sub))
            if passing < options or (keyword == "oneOf" and passing > 1):
                errors.append(f"{path}: matches {passing} of the {keyword} alternatives")
    for sub in schema.get("allOf", []):
        _check(value, sub, path, errors)
    if isinstance(value, dict):
        _check_object(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match pattern {schema['pattern']!r}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, errors)


def _check_object(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    properties = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{path}: missing required property '{key}'")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        child = f"{path}.{key}"
        if key in properties:
            _check(item, properties[key], child, errors)
        elif extra is False:
            errors.append(f"{path}: unexpected property '{key}'")
        elif isinstance(extra, dict):
            _check(item, extra, child, errors)


def _check_array(value: list, schema: dict, path: str, errors: list[str]) -> None:
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, (dict, bool)):
        for index, item in enumerate(value):
            _check(item, items, f"{path}[{index}]", errors)


def _check_number(value: float, schema: dict, path: str, errors: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: {value} is less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: {value} is greater than {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{path}: {value} must be greater than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        errors.append(f"{path}: {value} must be less than {schema['exclusiveMaximum']}")


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"object": dict, "array": list, "string": str, "boolean": bool,
            "null": type(None)}.get(name) is type(value)


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == True`` in Python but not in JSON."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _walk(schema: Any, path: str):
    """Every sub-schema with its path, for ``check_schema``."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key, sub in schema.get("properties", {}).items() if isinstance(schema.get("properties"), dict) else []:
        yield from _walk(sub, f"{path}.properties.{key}")
    for keyword in ("items", "additionalProperties"):
        yield from _walk(schema.get(keyword), f"{path}.{keyword}")
    for keyword in ("anyOf", "oneOf", "allOf"):
        for index, sub in enumerate(schema.get(keyword) or []):
            yield from _walk(sub, f"{path}.{keyword}[{index}]")
