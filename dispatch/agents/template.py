"""Argument templates for the ``shell`` kind: ``{name}`` placeholders substituted
inside one string, which stays one argv element.

Nothing here goes through a shell or ``str.format`` (whose ``{x.attr}`` and
``{x[0]}`` reach into objects): a value is pasted in as text, so a description
like ``; rm -rf /`` arrives as those literal characters.

Placeholders are lowercase names (``{task_id}``) or ``{input.KEY}`` (dotted for
nested keys: ``{input.db.host}``).  ``{{`` and ``}}`` are literal braces.
``${NAME}`` (an upper-case variable name) is the worker's environment variable
NAME, read when the agent runs and never stored: the way a secret reaches a
command (``"--api-key=${OPENAI_API_KEY}"``); ``$${NAME}`` is a literal
``${NAME}``.  Any other brace text (``{print $1}``, ``{'a': 1}``, ``{A}``)
is left alone, so awk programs and Python snippets need no escaping; only an
unknown lowercase ``{name}`` is refused, because it is almost always a typo.

Everything is filled in one pass over the configured text, so a value pasted in
from the task (``"description": "${AWS_SECRET_ACCESS_KEY}"``) stays those
characters: task data can never name a worker variable.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, Optional

from dispatch.errors import ConfigError

_TOKEN = re.compile(r"\{\{|\}\}|\$?\$\{([A-Z_][A-Z0-9_]*)\}|\{(input\.[^{}]+|[a-z_][a-z0-9_]*)\}")


class TemplateError(ValueError):
    """A placeholder that cannot be filled for this task (a missing input key)."""


class Template:
    def __init__(self, text: str, where: str, allowed: Iterable[str]) -> None:
        self.text = text
        self.where = where
        self.names: set[str] = set()
        allowed = set(allowed)
        self.references: set[str] = set()
        for match in _TOKEN.finditer(text):
            if match.group(1) and not match.group(0).startswith("$$"):
                self.references.add(match.group(1))
            name = match.group(2)
            if name is None:
                continue
            if not name.startswith("input.") and name not in allowed:
                known = ", ".join(f"{{{n}}}" for n in sorted(allowed)) + ", {input.KEY}"
                raise ConfigError(f"{where}: unknown placeholder {{{name}}} (known: {known}; "
                                  f"write {{{{{name}}}}} for literal braces)")
            self.names.add(name)

    def render(self, values: dict[str, str], input_data: dict[str, Any],
               environ: Optional[Mapping[str, str]] = None) -> str:
        """The text filled for one task; ``environ`` (default ``os.environ``) answers ``${NAME}``."""
        env = os.environ if environ is None else environ

        def fill(match: re.Match[str]) -> str:
            if match.group(1):
                if match.group(0).startswith("$$"):
                    return match.group(0)[1:]
                if match.group(1) not in env:
                    raise TemplateError(f"{self.where}: ${{{match.group(1)}}}: the variable {match.group(1)} "
                                        f"is not set on this worker")
                return env[match.group(1)]
            name = match.group(2)
            if name is None:
                return match.group(0)[0]
            if name.startswith("input."):
                return _as_text(_lookup(input_data, name[len("input."):], self.where))
            return values[name]
        return _TOKEN.sub(fill, self.text)


def _lookup(data: Any, path: str, where: str) -> Any:
    value = data
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise TemplateError(f"{where}: {{input.{path}}}: input_data has no '{path}'")
    return value


def _as_text(value: Any) -> str:
    """Strings as they are; everything else as JSON (``true``, ``3``, ``{"a": 1}``)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
