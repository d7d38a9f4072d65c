"""The report package on synthetic states: no pipeline, no Celery, no network.

``sample_state`` is also the page the browser test renders, so it carries every
case a real run can leave behind: several workers (one running tasks at once),
a failed task and the tasks it blocked, a quorum that retried, contexts, a
critical path, and hostile text in a description.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from dispatch.models import (ContextChoice, ContextItem, ExecutionPhase, GlobalContext, PhaseResult, PhaseState,
                             QuorumAttempt, QuorumResult, TaskContext, TaskPlan, TaskResult, TaskSpec, ValidatorVote,
                             iso)
from dispatch.report import render_html, render_text
from dispatch.common.text import one_line
from dispatch.report.common import fmt_ms
from dispatch.report.svg import nice_step
from dispatch.report.timeline import NOT_RUN, NOT_RUN_ROWS, phase_chart, task_chart

T0 = datetime(2025, 10, 7, 16, 30, 0, tzinfo=timezone.utc)
HOSTILE = '<script>alert("owned")</script> & <img src=x onerror=alert(1)>'


def at(ms: float) -> str:
    return iso(T0 + timedelta(milliseconds=ms))


def phase(number: int, start: float, ms: float, success: bool = True, **kw) -> PhaseResult:
    p = ExecutionPhase.of(number)
    return PhaseResult(phase=p, phase_name=p.title, success=success, duration_ms=ms, started_at=at(start),
                       completed_at=at(start + ms), **kw)


def vote(name: str, rec, conf, **kw) -> ValidatorVote:
    return ValidatorVote(validator=name, kind=kw.pop("kind", "model"), recommendation=rec, confidence=conf,
                         alignment_score=conf, latency_ms=kw.pop("latency_ms", 840.0), **kw)


# (task_id, agent, worker, start ms into phase 4, duration ms, status, deps, error)
TASKS = [
    ("fetch-schema", "coder", "celery@alpha", 0, 400, "success", [], None),
    ("gen-db-writer", "coder", "celery@alpha", 410, 900, "success", ["fetch-schema"], None),
    ("gen-db-reader", "coder", "celery@alpha", 430, 700, "success", ["fetch-schema"], None),
    ("gen-api", "coder", "celery@beta", 1320, 650, "success", ["gen-db-writer"], None),
    ("lint-models", "shell", "celery@beta", 5, 220, "success", [], None),
    ("docs-outline", "echo", "celery@gamma", 8, 160, "success", [], None),
    ("flaky-migration", "shell", "celery@gamma", 200, 480, "failed", [],
     "CalledProcessError: migrate.sh exited 3\nTraceback (most recent call last):\n  ..."),
    ("apply-migration", "shell", None, None, 0, "skipped", ["flaky-migration"],
     "skipped: dependency 'flaky-migration' failed"),
    ("integration-tests", "tester", "celery@beta", 1980, 1100, "success", ["gen-api", "gen-db-reader"], None),
    ("xss-probe", "echo", "celery@gamma", 700, 120, "success", [], None),
    ("release-notes", "echo", None, None, 0, "skipped", ["apply-migration"],
     "skipped: dependency 'apply-migration' was skipped"),
]
CRITICAL = ["fetch-schema", "gen-db-writer", "gen-api", "integration-tests"]
EXEC_START = 2000.0


def sample_state() -> PhaseState:
    specs, results = [], []
    for tid, agent, worker, start, ms, status, deps, error in TASKS:
        description = HOSTILE if tid == "xss-probe" else f"Do the {tid.replace('-', ' ')} step"
        specs.append(TaskSpec(task_id=tid, agent=agent, description=description, dependencies=deps,
                              context_requirements=["rag:ONEX architecture patterns"]))
        timed = {} if start is None else {"started_at": at(EXEC_START + start),
                                          "completed_at": at(EXEC_START + start + ms)}
        results.append(TaskResult(task_id=tid, agent=agent, worker=worker, success=status == "success",
                                  skipped=status == "skipped", duration_ms=ms, error=error,
                                  attempts=0 if start is None else (2 if tid == "flaky-migration" else 1), **timed))
    first = QuorumAttempt(attempt=1, decision="RETRY", confidence=0.55, deficiencies=["task 'gen-api' is vague"],
                          votes=[vote("gpt-judge", "RETRY", 0.5), vote("graph-check", "PASS", 1.0, kind="deterministic")])
    votes = [vote("gpt-judge", "PASS", 0.81), vote("graph-check", "PASS", 1.0, kind="deterministic", latency_ms=2.0),
             vote("local-llm", None, None, error="timeout after 30 s")]
    quorum = QuorumResult(decision="PASS", confidence=0.87, votes=votes, retry_count=1, answered_share=0.67,
                          attempts=[first, QuorumAttempt(attempt=2, decision="PASS", confidence=0.87, votes=votes,
                                                         backoff_s=1.0)],
                          warnings=["validator local-llm abstained: timeout"])
    item = ContextItem(id="c1", source="docs/onex.md#L1-40", content="ONEX nodes are Effect, Compute ...",
                       score=0.91, tokens=420, query="ONEX architecture patterns", kind="doc")
    code = ContextItem(id="c2", source="src/db.py", content="class Writer: ...", score=0.74, tokens=310)
    contexts = {
        "gen-db-writer": TaskContext(task_id="gen-db-writer", items=[item, code], total_tokens=730, budget_tokens=2000,
                                     report=[ContextChoice(item_id="c1", source=item.source, score=0.91, tokens=420,
                                                           requirement="rag:ONEX architecture patterns",
                                                           reason="matches requirement rag:ONEX architecture patterns"),
                                             ContextChoice(item_id="c2", source=code.source, score=0.74, tokens=310,
                                                           requirement="file:src/db.py", reason="named file")]),
        "xss-probe": TaskContext(task_id="xss-probe", items=[], total_tokens=0, budget_tokens=2000,
                                 unmatched_requirements=["pattern:<b>none</b>"]),
    }
    phases = [phase(0, 0, 180), phase(1, 190, 1600, retry_count=1), phase(2, 1800, 12.5), phase(3, 1820, 40),
              phase(4, EXEC_START, 3100, success=False, error="1 failed, 2 skipped")]
    return PhaseState(run_id="run-7f3a", status="failed", started_at=at(0), saved_at=at(5200),
                      user_prompt="Generate two ONEX nodes and their API", tasks_data=specs,
                      phases_executed=phases, quorum_result=quorum, task_results=results, task_contexts=contexts,
                      global_context=GlobalContext(items=[item, code], total_tokens=730, budget_tokens=8000,
                                                   queries=["ONEX architecture patterns"],
                                                   per_query_hits={"ONEX architecture patterns": 2},
                                                   retriever_timings_ms={"bm25": 12.0}),
                      plan=TaskPlan(order=[t[0] for t in TASKS], critical_path=CRITICAL,
                                    critical_path_length=len(CRITICAL)))


@pytest.fixture
def page() -> str:
    return render_html(sample_state())


# ---------------------------------------------------------------- the page
def test_page_has_every_section(page):
    for anchor in ("phases", "timeline", "critical-path", "quorum", "tasks", "context"):
        assert f'id="{anchor}"' in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'id="phase-timeline"' in page and 'id="task-timeline"' in page


def test_every_task_has_a_bar_coloured_by_status(page):
    bars = re.findall(r'<g class="bar s-(\w+)( crit)?" data-key="([^"]+)"', page)
    tasks = {key: (status, bool(crit)) for status, crit, key in bars if not key.isupper()}
    assert set(tasks) == {t[0] for t in TASKS}
    assert tasks["flaky-migration"][0] == "failed"
    assert tasks["apply-migration"][0] == tasks["release-notes"][0] == "skipped"
    assert tasks["lint-models"][0] == "success"
    assert {k for k, (_, crit) in tasks.items() if crit} == set(CRITICAL)
    phases = {key for _, _, key in bars if key.isupper()}
    assert phases == {p.value for p in ExecutionPhase}


def test_bars_carry_hover_details(page):
    tip = re.search(r'data-key="flaky-migration">\s*<title>(.*?)</title>', page, re.S).group(1)
    for fact in ("task: flaky-migration", "agent: shell", "worker: celery@gamma", "duration: 480 ms",
                 "attempts: 2", "error: CalledProcessError: migrate.sh exited 3 …"):
        assert fact in tip


def test_critical_path_is_highlighted_and_linked(page):
    assert page.count('class="crit-link"') == len(CRITICAL) - 1
    chain = re.search(r'<ol class="path">(.*?)</ol>', page, re.S).group(1)
    assert re.findall(r'">([\w-]+) <small>', chain) == CRITICAL
    assert 'id="only-crit"' in page


def test_quorum_decision_votes_and_attempts(page):
    quorum = re.search(r'<section id="quorum">(.*?)</section>', page, re.S).group(1)
    assert '<span class="badge PASS">PASS</span>' in quorum
    assert "87%" in quorum and "gpt-judge" in quorum and "graph-check" in quorum
    assert '<span class="badge abstained">abstained</span>' in quorum and "timeout after 30 s" in quorum
    assert "Attempt 1" in quorum and "Attempt 2" in quorum and "task &#x27;gen-api&#x27; is vague" in quorum


def test_context_items_per_task(page):
    context = re.search(r'<section id="context">(.*?)</section>', page, re.S).group(1)
    assert "docs/onex.md#L1-40" in context and "named file" in context
    assert "matches requirement rag:ONEX architecture patterns" in context
    assert "2 items · 730 / 2000 tokens" in context
    assert "pattern:&lt;b&gt;none&lt;/b&gt;" in context


def test_user_content_is_escaped(page):
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # ours, allowed by hash in the CSP


def test_page_is_self_contained(page):
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page and "url(http" not in page
    assert "default-src &#x27;none&#x27;" in page  # a CSP that forbids fetching anything


def test_task_ids_that_look_like_markup_are_escaped_in_the_chart():
    state = sample_state()
    state.task_results[0].task_id = state.tasks_data[0].task_id = "<b>x</b>"
    state.plan.critical_path[0] = "<b>x</b>"
    html = render_html(state)
    assert "<b>x</b>" not in html and 'data-key="&lt;b&gt;x&lt;/b&gt;"' in html


def test_partial_states_render():
    empty = PhaseState(run_id="empty")
    html = render_html(empty)
    assert "No phase has run" in html and "Quorum validation did not run" in html
    planned = sample_state()
    planned.task_results, planned.quorum_result = [], None
    planned.phases_executed = planned.phases_executed[:3] + [PhaseResult.skipped_result(ExecutionPhase.CONTEXT_FILTERING,
                                                                                         "context disabled")]
    html = render_html(planned)
    assert "phase 4 has not run" in html and "skipped: context disabled" in html
    assert html.count('<span class="badge pending">') == len(TASKS)


# -------------------------------------------------------------- the layout
def test_overlapping_tasks_on_one_worker_get_their_own_lanes():
    chart = task_chart(sample_state())
    alpha = [r for r in chart.rows if r.group == 0]
    assert alpha[0].label == "celery@alpha" and [r.label for r in alpha[1:]] == [""]
    assert [[b.key for b in r.bars] for r in alpha] == [["fetch-schema", "gen-db-writer"], ["gen-db-reader"]]
    for row in chart.rows:
        for a, b in zip(row.bars, row.bars[1:]):
            assert a.end_ms <= b.start_ms


def test_tasks_that_did_not_run_start_when_they_were_blocked():
    chart = task_chart(sample_state())
    not_run = [b for r in chart.rows if r.group == 3 for b in r.bars]
    assert chart.rows[-2].label == NOT_RUN and [b.key for b in not_run] == ["apply-migration", "release-notes"]
    assert not_run[0].start_ms == not_run[1].start_ms == pytest.approx(680)  # flaky-migration ended
    assert not_run[0].end_ms == chart.span_ms == pytest.approx(3100)


def test_many_tasks_that_did_not_run_are_summed_up():
    state = sample_state()
    for n in range(NOT_RUN_ROWS + 5):
        state.tasks_data.append(TaskSpec(task_id=f"late-{n}", agent="echo", description="-"))
        state.task_results.append(TaskResult(task_id=f"late-{n}", agent="echo", success=False, skipped=True))
    rows = [r for r in task_chart(state).rows if r.group == 3]
    assert len(rows) == NOT_RUN_ROWS + 1 and rows[-1].note.startswith("… and 7 more tasks that did not run")
    assert "and 7 more tasks that did not run" in render_html(state)


def test_phase_without_timestamps_is_laid_after_the_previous_one():
    state = sample_state()
    state.phases_executed[2].started_at = state.phases_executed[2].completed_at = None
    bars = [r.bars[0] for r in phase_chart(state).rows]
    assert bars[2].start_ms == pytest.approx(1790) and bars[2].end_ms == pytest.approx(1802.5)


@pytest.mark.parametrize("ms, text", [(0.42, "0.4 ms"), (12.5, "12 ms"), (850, "850 ms"), (1500, "1.5 s"),
                                      (2000, "2 s"), (42_000, "42 s"), (185_000, "3m 05s"), (7_500_000, "2h 05m")])
def test_fmt_ms(ms, text):
    assert fmt_ms(ms) == text


def test_nice_step_and_one_line():
    assert nice_step(3100) == 500 and nice_step(80) == 10 and nice_step(1.2e6) == 200_000
    assert one_line("a\x1b[31mred\nsecond") == "a[31mred …"
    assert one_line("x" * 50, 10) == "x" * 9 + "…"


# ---------------------------------------------------------------- the text
def test_text_summary():
    text = render_text(sample_state())
    assert text.startswith("dispatch run run-7f3a · failed · wall time 5.1 s")
    phases = text.split("\n\n")[1].splitlines()
    assert phases[0] == "PHASES" and "Quorum Validation" in phases[3] and "1.6 s" in phases[3]
    assert "✗ failed" in phases[6] and "1 failed, 2 skipped" in phases[6]
    tasks = next(b for b in text.split("\n\n") if b.startswith("TASKS")).splitlines()
    assert tasks[0] == "TASKS  8 ok, 1 failed, 2 skipped on 3 workers"
    row = next(line for line in tasks if "flaky-migration" in line)
    assert "celery@gamma" in row and "480 ms" in row and "✗ failed" in row and "migrate.sh exited 3 …" in row
    assert next(line for line in tasks if "gen-api" in line).lstrip().startswith("* gen-api")
    assert "QUORUM  PASS · confidence 87% · answered 67% · 1 retry" in text
    assert "abstained" in text and "timeout after 30 s" in text
    assert "CRITICAL PATH  fetch-schema → gen-db-writer → gen-api → integration-tests  (3 s of task time)" in text


def test_text_columns_line_up_and_carry_no_control_characters():
    state = sample_state()
    state.task_results[0].error = "boom\x1b]0;pwned\x07 here"
    text = render_text(state)
    assert "\x1b" not in text and "\x07" not in text
    tasks = next(b for b in text.split("\n\n") if b.startswith("TASKS")).splitlines()[1:-1]
    status_at = {line.index("status") if "status" in line else line.index("✓") if "✓" in line else
                 line.index("✗") if "✗" in line else line.index("⚠") for line in tasks}
    assert len(status_at) == 1


def test_text_of_an_empty_state():
    text = render_text(PhaseState(run_id="r0"))
    assert "no phase has run" in text and "no agent task has run" in text and "did not run" in text


# ------------------------------------------------------------ issue 16 fixes
def test_alignment_is_a_percentage_once():
    state = sample_state()
    state.quorum_result.votes[0].alignment_score = 81.0  # validators score alignment on 0..100
    quorum = re.search(r'<section id="quorum">(.*?)</section>', render_html(state), re.S).group(1)
    assert "81%" in quorum and "8100%" not in quorum and "10000%" not in quorum


def test_critical_path_of_one_task_is_singular():
    state = sample_state()
    state.plan.critical_path = ["fetch-schema"]
    page = render_html(state)
    assert ">1 task<" in page and "1 tasks" not in page


def test_wall_time_runs_from_the_runs_start_and_the_lead_in_is_labelled():
    state = sample_state()
    state.started_at = at(-800)  # prepared 0.8 s before phase 0 began (submit, queue, worker start-up)
    chart = phase_chart(state)
    assert chart.lead_in_ms == pytest.approx(800) and chart.axis_label == "since the run started"
    assert chart.rows[0].bars[0].start_ms == pytest.approx(800)
    page = render_html(state)
    assert "5.9 s" in re.search(r'<header>(.*?)</header>', page, re.S).group(1)  # 5.1 s of phases + 0.8 s
    assert '<g class="lead-in"><title>800 ms from the run&#x27;s start' in page and ">start-up 800 ms<" in page
    assert 'class="axis-label" x="8" y="17">since the run started<' in page
    assert ">since phase 4 started<" in page
    assert render_text(state).startswith("dispatch run run-7f3a · failed · wall time 5.9 s")
    state.started_at = at(0)
    assert phase_chart(state).lead_in_ms == 0 and 'class="lead-in"' not in render_html(state)


def test_each_tasks_output_is_readable_and_capped():
    state = sample_state()
    big = "line of output\n" * 2000
    state.task_results[0].output = {"exit_code": 0, "stdout": "fetched 12 tables\n" + big, "stderr": "warning: slow"}
    state.task_results[1].output = {"task_id": "gen-db-writer", "description": "Do the gen db writer step"}
    page = render_html(state)
    row = re.search(r'<tr id="task-0".*?</tr>', page, re.S).group(0)
    assert '<details class="out"><summary>fetched 12 tables</summary>' in row
    assert "<h4>stdout</h4>" in row and "<h4>stderr</h4><pre>warning: slow</pre>" in row
    assert "chars truncated" in row and len(row) < 6000
    row = re.search(r'<tr id="task-1".*?</tr>', page, re.S).group(0)
    assert "<summary>Do the gen db writer step</summary><h4>output</h4>" in row
    failed = re.search(r'<tr id="task-6".*?</tr>', page, re.S).group(0)
    assert '<td class="out err"><details class="out"><summary>CalledProcessError: migrate.sh exited 3' in failed
