"""Reports of a finished (or partial) run: where the time went, who voted what.

Two pure functions of a ``PhaseState``, so a report can be made from a state
file, a run in the store, or a state built in a test, without Celery or a
network:

- ``render_html(state)``: one self-contained HTML page (Gantt timelines of the
  phases and of the agent tasks by worker, the critical path, the quorum votes,
  the context given to each task);
- ``render_text(state)``: the same facts as terminal tables.
"""
from dispatch.report.html import render_html
from dispatch.report.text import render_text

__all__ = ["render_html", "render_text"]
