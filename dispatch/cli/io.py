"""Reading the task breakdown (stdin or ``--input-file``) and writing JSON to stdout: the CLI's only stdout.

A run's result document is streamed (``emit_output``): its ``results`` array is
written one task at a time, so a 100k-task run never holds the whole document
(as a dict, then as one string) in memory.  The bytes are exactly those of
``json.dumps(output.model_dump(mode="json"), indent=2)``.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Optional

from dispatch.errors import InputError
from dispatch.models import DispatchInput
from dispatch.pipeline.inputs import max_input_bytes, parse_input


def read_input(input_file: Optional[str], load_phase_state: Optional[str]) -> Optional[DispatchInput]:
    """The breakdown, or None when a loaded state is all the run needs and nothing is piped."""
    if input_file:
        try:
            with open(input_file, encoding="utf-8") as fh:
                return parse_input(fh.read(max_input_bytes() + 1), input_file)  # past the limit: refused
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{input_file}: cannot read input file "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
    if sys.stdin is None or sys.stdin.closed:
        return None
    if sys.stdin.isatty():
        if load_phase_state:
            return None
        raise InputError("no input: pipe a task breakdown on stdin or use --input-file FILE "
                         "(see 'dispatch schema' for its shape)")
    text = sys.stdin.read(max_input_bytes() + 1)  # never more than the limit held in memory
    if not text.strip() and load_phase_state:
        return None
    return parse_input(text, "stdin")


STREAMED = "results"  # the one field of a DispatchOutput that grows with the run


def emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def emit_output(output: Any, stream: Optional[Any] = None) -> None:
    """A ``DispatchOutput`` on stdout, its ``results`` streamed; byte for byte what ``emit`` would write."""
    out = stream or sys.stdout
    head = output.model_dump(mode="json", exclude={STREAMED})  # everything but the results: small
    names = [n for n in type(output).model_fields if n in head or n == STREAMED]
    names += [n for n in head if n not in names]  # a computed field, should one appear
    out.write("{")
    for i, name in enumerate(names):
        out.write(("," if i else "") + "\n  " + json.dumps(name) + ": ")
        if name == STREAMED:
            _write_items(out, getattr(output, STREAMED))
        else:  # a value one level down: json.dumps's own text, each line indented once more
            out.write(json.dumps(head[name], indent=2, default=str).replace("\n", "\n  "))
    out.write("\n}\n")
    out.flush()


def _write_items(out: Any, items: list) -> None:
    if not items:
        out.write("[]")
        return
    out.write("[")
    chunk: list[str] = []
    for i, item in enumerate(items):  # JSON strings hold no raw newline: re-indenting by replace is exact
        text = json.dumps(item.model_dump(mode="json"), indent=2, default=str).replace("\n", "\n    ")
        chunk.append(("," if i else "") + "\n    " + text)
        if len(chunk) >= 256:
            out.write("".join(chunk))
            chunk.clear()
    out.write("".join(chunk) + "\n  ]")
