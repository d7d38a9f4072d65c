"""Reading the task breakdown (stdin or ``--input-file``) and writing JSON to stdout: the CLI's only stdout."""
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


def emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()
