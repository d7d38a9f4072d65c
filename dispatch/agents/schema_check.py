"""The ``llm`` kind's ``output_schema``, checked with the ``jsonschema`` library.

The whole of JSON Schema is the library's (``$ref`` into ``$defs``, as pydantic
writes its schemas, ``not``, ``uniqueItems``, ``minProperties``, ...), under the
draft the schema names in ``$schema`` (2020-12 when it names none).  What is
dispatch's own is only what the library cannot decide for us:

- what it would not check is refused by name at config time, never ignored: a
  ``$ref`` to another document (nothing is fetched) and a ``format`` that no
  installed checker implements;
- each fault is phrased with its path (``$.files[2].path: expected string, got
  integer``), because the text goes back to the model in a repair request and a
  named mistake is one a model fixes.
"""
from __future__ import annotations

from typing import Any, Iterator

from jsonschema import Draft202012Validator, exceptions, validators
from referencing import Registry
from referencing.exceptions import NoSuchResource

from dispatch.common.text import clip
from dispatch.errors import ConfigError

MAX_ERRORS = 20
DATA_KEYWORDS = ("enum", "const", "default", "examples")  # values here are data, not sub-schemas


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)


REGISTRY: Registry = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def _validator_class(schema: dict) -> Any:
    return validators.validator_for(schema, default=Draft202012Validator)


def check_schema(schema: Any, where: str) -> None:
    """Refuse, at config time, a schema that is invalid or holds something that would go unchecked."""
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: must be a JSON Schema object")
    cls = _validator_class(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise ConfigError(f"{where}: {_schema_fault(exc)}") from None
    checkable = set(cls.FORMAT_CHECKER.checkers)
    for path, key, value in _keywords(schema, "$"):
        if key == "$ref" and not value.startswith("#"):
            raise ConfigError(f"{where}: {path}.$ref: {value!r} points outside this schema and is not fetched; "
                              f"put it under $defs and refer to it as '#/$defs/NAME'")
        if key == "format" and value not in checkable:
            raise ConfigError(f"{where}: {path}.format: {value!r} cannot be checked here (checked formats: "
                              f"{', '.join(sorted(checkable))}); drop it or use a pattern")


def validate(value: Any, schema: dict) -> list[str]:
    """Every fault of ``value`` against ``schema`` (empty when it conforms), shallowest first."""
    cls = _validator_class(schema)
    checker = cls(schema, format_checker=cls.FORMAT_CHECKER, registry=REGISTRY)
    try:
        errors = sorted(checker.iter_errors(value), key=lambda e: len(e.absolute_path))
    except exceptions.SchemaError as exc:
        return [f"$: the schema is invalid ({_schema_fault(exc)})"]
    except Exception as exc:  # noqa: BLE001 - an unresolvable $ref: check_schema refuses them, old states may not
        return [f"$: cannot check against this schema ({type(exc).__name__}: {clip(exc, 200)})"]
    return [_fault(checker, e) for e in errors][:MAX_ERRORS]


def _fault(checker: Any, error: exceptions.ValidationError) -> str:
    """One fault in the form a model reads best: the path, then what is wrong."""
    path, kind, want, got = error.json_path, error.validator, error.validator_value, error.instance
    if kind == "type":
        names = want if isinstance(want, list) else [want]
        return f"{path}: expected {' or '.join(names)}, got {_type_name(got)}"
    if kind == "enum":
        return f"{path}: {clip(repr(got), 80)} is not one of {clip(repr(want), 80)}"
    if kind == "const":
        return f"{path}: must be {clip(repr(want), 80)}"
    if kind == "required":  # one error per missing property; the message names it as its repr
        return f"{path}: missing required property {error.message.removesuffix(' is a required property')}"
    if kind == "additionalProperties" and want is False and isinstance(got, dict):
        extra = [k for k in got if k not in error.schema.get("properties", {})]
        return f"{path}: unexpected propert{'y' if len(extra) == 1 else 'ies'} " + ", ".join(f"'{k}'" for k in extra)
    simple = {"minItems": f"fewer than {want} items", "maxItems": f"more than {want} items",
              "minLength": f"shorter than {want} characters", "maxLength": f"longer than {want} characters",
              "minProperties": f"fewer than {want} properties", "maxProperties": f"more than {want} properties",
              "pattern": f"does not match pattern {want!r}", "minimum": f"{got} is less than {want}",
              "maximum": f"{got} is greater than {want}", "exclusiveMinimum": f"{got} must be greater than {want}",
              "exclusiveMaximum": f"{got} must be less than {want}", "uniqueItems": "items are not unique",
              "not": "must not match the schema under 'not'", "multipleOf": f"{got} is not a multiple of {want}",
              "format": f"{clip(repr(got), 80)} is not a valid {want!r}", "False schema": "not allowed"}
    if kind in simple:
        return f"{path}: {simple[kind]}"
    if kind in ("anyOf", "oneOf"):
        passing = sum(1 for sub in want if checker.evolve(schema=sub).is_valid(got))
        return f"{path}: matches {passing} of the {kind} alternatives"
    return f"{path}: {clip(error.message, 200)}"


def _schema_fault(exc: exceptions.SchemaError) -> str:
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
    if exc.path and exc.path[-1] == "type" and isinstance(exc.instance, (str, list)):
        names = exc.instance if isinstance(exc.instance, list) else [exc.instance]
        unknown = [n for n in names if n not in ("object", "array", "string", "number", "integer", "boolean",
                                                 "null")]
        if unknown:
            return f"{path}: unknown type {unknown[0]!r}"
    if exc.validator == "format" and exc.validator_value == "regex":
        return f"{path}: invalid regular expression {exc.instance!r}"
    return f"{path}: {clip(exc.message, 200)}"


def _keywords(node: Any, path: str) -> Iterator[tuple[str, str, str]]:
    """``(path, keyword, value)`` for every string-valued ``$ref`` and ``format`` in the schema."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _keywords(item, f"{path}[{index}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("$ref", "format") and isinstance(value, str):
            yield path, key, value
        elif key not in DATA_KEYWORDS:
            yield from _keywords(value, f"{path}.{key}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
