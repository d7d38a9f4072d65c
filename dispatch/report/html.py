"""The HTML report: one self-contained page showing where a run's time went.

Every string that comes from a state (task ids, descriptions, errors, votes,
context sources) passes through ``_e`` before it reaches the page: states are
built from user input and agent output, and a report is opened in a browser.
"""
from __future__ import annotations

from html import escape
from typing import Iterable, Optional

from dispatch.common.text import one_line, truncate
from dispatch.models import ExecutionPhase, PhaseState, QuorumResult, TaskContext, TaskResult, ValidatorVote
from dispatch.report.assets import CONTENT_SECURITY_POLICY, CSS, JS, SVG_DEFS
from dispatch.report.common import (FAILED, SKIPPED, SUCCESS, critical_ids, descriptions, execution_origin, fmt_ms,
                                    offset_text, output_streams, output_summary, phase_status, run_wall_ms,
                                    task_counts, task_status)
from dispatch.report.svg import render_chart
from dispatch.report.timeline import phase_chart, task_chart
from dispatch.report.usage import run_usage


def _e(text: object) -> str:
    return escape("" if text is None else str(text), quote=True)


def _badge(label: str, cls: Optional[str] = None) -> str:
    return f'<span class="badge {_e(cls or label)}">{_e(label)}</span>'


def _table(headers: Iterable[str], rows: Iterable[str], numeric: Iterable[int] = ()) -> str:
    nums = set(numeric)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in nums else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _pct(value: Optional[float]) -> str:
    """A share in 0..1 (confidence, answered weight) as a percentage."""
    return "-" if value is None else f"{value * 100:.0f}%"


def _score(value: Optional[float]) -> str:
    """An alignment score, which validators give on 0..100 already."""
    return "-" if value is None else f"{value:.0f}%"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _legend(with_critical: bool = False) -> str:
    items = [f'<span><i class="{s}"></i>{s}</span>' for s in (SUCCESS, FAILED, SKIPPED)]
    if with_critical:
        items.append('<span><i class="crit"></i>critical path</span>')
        items.append('<label><input type="checkbox" id="only-crit"> show only the critical path</label>')
    return f'<div class="legend">{"".join(items)}</div>'


def _long_text(text: Optional[str], limit: int = 160) -> str:
    """A cell for errors: the first line, the whole text one click away."""
    if not text:
        return ""
    first = one_line(text, limit)
    if first == str(text).strip():
        return _e(first)
    return f"<details><summary>{_e(first)}</summary><pre>{_e(text)}</pre></details>"


# ------------------------------------------------------------------ sections
def _header(state: PhaseState) -> str:
    counts = task_counts(state)
    span = run_wall_ms(state)
    phase_total = sum(r.duration_ms for r in state.phases_executed)
    workers = {r.worker for r in state.task_results if r.worker}
    facts = [("status", _badge(state.status)),
             ("started", _e((state.started_at or "-").replace("T", " ").replace("Z", " UTC"))),
             ("wall time", f'<span title="from the run\'s start to its last recorded end">{_e(fmt_ms(span))}</span>'),
             ("phase time", _e(fmt_ms(phase_total))),
             ("tasks", f"{counts[SUCCESS]} ok · {counts[FAILED]} failed · {counts[SKIPPED]} skipped"),
             ("workers", str(len(workers)))]
    if state.plan and state.plan.critical_path:
        facts.append(("critical path", _plural(len(state.plan.critical_path), "task")))
    items = "".join(f'<li><span class="k">{k}</span><span class="v">{v}</span></li>' for k, v in facts)
    prompt = f'<p class="sub">{_e(one_line(state.user_prompt, 400))}</p>' if state.user_prompt.strip() else ""
    return (f'<header><h1>dispatch run <code>{_e(state.run_id)}</code></h1>{prompt}'
            f'<ul class="facts">{items}</ul></header>')


def _phases(state: PhaseState) -> str:
    if not state.phases_executed:
        return '<section id="phases"><h2>Phases</h2><p class="empty">No phase has run in this state.</p></section>'
    rows = []
    for r in state.phases_executed:
        status = phase_status(r)
        detail = r.error if r.error else (r.output_data.get("reason") if r.skipped else "")
        duration = "-" if r.skipped else fmt_ms(r.duration_ms)
        rows.append(f'<tr id="phase-{r.phase.number}"><td>{r.phase.number} {_e(r.phase.title)}</td>'
                    f"<td>{_badge(status)}</td><td class=\"num\">{_e(duration)}</td>"
                    f'<td class="num">{r.retry_count}</td><td class="mono">{_e(r.started_at or "-")}</td>'
                    f'<td class="{"err" if r.error else "muted"}">{_long_text(detail)}</td></tr>')
    table = _table(["phase", "status", "duration", "retries", "started", "error / reason"], rows, numeric=(2, 3))
    chart = render_chart(phase_chart(state), "phase-timeline", "Timeline of the run's phases")
    return (f'<section id="phases"><h2>Phases</h2>{_legend()}<div class="chart">{chart}</div>'
            f"<h3>Phase results</h3>{table}</section>")


def _timeline(state: PhaseState) -> str:
    if not state.task_results:
        body = '<p class="empty">No agent task results in this state (phase 4 has not run).</p>'
    else:
        chart = render_chart(task_chart(state), "task-timeline", "Timeline of the agent tasks by worker")
        body = (f'{_legend(with_critical=bool(critical_ids(state)))}<div class="chart">{chart}</div>'
                '<p class="sub">Time since phase 4 started. Tasks that did not run are drawn from the '
                "moment they were blocked. Hover a bar for details; click it to jump to the task.</p>")
    return f'<section id="timeline"><h2>Agent tasks by worker</h2>{body}</section>'


def _critical_path(state: PhaseState) -> str:
    path = critical_ids(state)
    if not path:
        why = "no plan in this state (phase 2 has not run)" if state.plan is None else "the plan has no tasks"
        return f'<section id="critical-path"><h2>Critical path</h2><p class="empty">None: {why}.</p></section>'
    results = {r.task_id: (i, r) for i, r in enumerate(state.task_results)}
    chips, total = [], 0.0
    for tid in path:
        if tid in results:
            i, r = results[tid]
            total += r.duration_ms if not r.skipped else 0.0
            chips.append(f'<li><a href="#task-{i}" class="{task_status(r)}">{_e(tid)} '
                         f"<small>{_e(fmt_ms(r.duration_ms) if not r.skipped else 'not run')}</small></a></li>")
        else:
            chips.append(f"<li><a>{_e(tid)} <small>no result</small></a></li>")
    execution = state.result_for(ExecutionPhase.PARALLEL_EXECUTION)
    note = ""
    if state.task_results:
        note = (f'<p class="sub">The chain took {_e(fmt_ms(total))} of task time'
                + (f"; phase 4 took {_e(fmt_ms(execution.duration_ms))}" if execution else "")
                + ". No schedule can finish faster than this chain.</p>")
    return (f'<section id="critical-path"><h2>Critical path</h2>{note}'
            f'<ol class="path">{"".join(chips)}</ol></section>')


def _vote_rows(votes: list[ValidatorVote]) -> list[str]:
    rows = []
    for v in votes:
        vote = _badge("abstained") if v.abstained else _badge(v.recommendation or "")
        defs = "".join(f"<li>{_e(d)}</li>" for d in v.deficiencies)
        rows.append(f"<tr><td>{_e(v.validator)}</td><td>{_e(v.kind)}</td><td class=\"num\">{v.weight:g}</td>"
                    f'<td>{vote}</td><td class="num">{_pct(v.confidence)}</td>'
                    f'<td class="num">{_score(v.alignment_score)}</td><td class="num">{_e(fmt_ms(v.latency_ms))}'
                    f'{" (cached)" if v.cached else ""}</td>'
                    f'<td>{f"<ul class=plain>{defs}</ul>" if defs else ""}</td>'
                    f'<td class="err">{_long_text(v.error)}</td></tr>')
    return rows


OPEN_CONTEXTS = 5  # up to this many tasks, their context tables start unfolded
VOTE_HEADERS = ["validator", "kind", "weight", "vote", "confidence", "alignment", "latency", "deficiencies", "error"]


def _quorum(state: PhaseState) -> str:
    q: Optional[QuorumResult] = state.quorum_result
    if q is None:
        return ('<section id="quorum"><h2>Quorum</h2><p class="empty">Quorum validation did not run in this '
                "state (it runs with --enable-quorum).</p></section>")
    facts = [("decision", _badge(q.decision)), ("confidence", _pct(q.confidence)),
             ("answered", _pct(q.answered_share)), ("quorum reached", "yes" if q.quorum_reached else "no"),
             ("retries", str(q.retry_count))]
    items = "".join(f'<li><span class="k">{k}</span><span class="v">{v}</span></li>' for k, v in facts)
    out = [f'<section id="quorum"><h2>Quorum</h2><ul class="facts">{items}</ul>']
    for title, lines in (("Deficiencies", q.deficiencies), ("Warnings", q.warnings)):
        if lines:
            out.append(f'<h3>{title}</h3><ul class="plain">{"".join(f"<li>{_e(x)}</li>" for x in lines)}</ul>')
    out.append("<h3>Votes</h3>" + (_table(VOTE_HEADERS, _vote_rows(q.votes), numeric=(2, 4, 5, 6))
                                   if q.votes else '<p class="empty">No votes recorded.</p>'))
    if len(q.attempts) > 1:
        out.append("<h3>Attempts</h3>")
        for a in q.attempts:
            meta = (f"confidence {_pct(a.confidence)} · answered {_pct(a.answered_share)}"
                    + (f" · backoff {a.backoff_s:g} s" if a.backoff_s else ""))
            defs = f'<ul class="plain">{"".join(f"<li>{_e(d)}</li>" for d in a.deficiencies)}</ul>'
            out.append(f"<details><summary>Attempt {a.attempt} {_badge(a.decision)}"
                       f'<span class="meta">{_e(meta)}</span></summary>{defs if a.deficiencies else ""}'
                       f"{_table(VOTE_HEADERS, _vote_rows(a.votes), numeric=(2, 4, 5, 6))}</details>")
    out.append("</section>")
    return "".join(out)


def _money(cost: Optional[float]) -> str:
    return "-" if cost is None else f"${cost:.4f}" if cost >= 0.0001 or cost == 0 else f"${cost:.6f}"


def _spend(state: PhaseState) -> str:
    """Where the money went: the total, the cap a pause stopped at, and the spend by phase, agent and model."""
    usage = run_usage(state)
    paused = (f'<p class="err">Paused at a budget cap: {_e(state.pause_reason)} '
              f"({_plural(sum(1 for r in state.task_results if r.not_run), 'task')} not run)</p>"
              if state.status == "paused" and state.pause_reason else "")
    if usage is None:
        return f'<section id="spend"><h2>Spend</h2>{paused}<p class="empty">No model was called.</p></section>'
    t = usage.total
    facts = [("cost", _money(t.cost_usd)), ("input tokens", f"{t.input_tokens:,}"),
             ("output tokens", f"{t.output_tokens:,}"), ("calls", f"{t.calls:,}")]
    items = "".join(f'<li><span class="k">{k}</span><span class="v">{_e(v)}</span></li>' for k, v in facts)
    out = [f'<section id="spend"><h2>Spend</h2>{paused}<ul class="facts">{items}</ul>']
    headers = ("", "Calls", "Input tokens", "Output tokens", "Cost")
    for title, bucket in (("By phase", usage.phases), ("By agent", usage.agents), ("By model", usage.models)):
        rows = [f"<tr><td><code>{_e(name)}</code></td><td class=\"num\">{u.calls:,}</td>"
                f"<td class=\"num\">{u.input_tokens:,}</td><td class=\"num\">{u.output_tokens:,}</td>"
                f"<td class=\"num\">{_e(_money(u.cost_usd))}</td></tr>"
                for name, u in sorted(bucket.items(), key=lambda kv: -(kv[1].cost_usd or 0) or -kv[1].total_tokens)]
        out.append(f"<h3>{title}</h3>{_table(headers, rows, numeric=(1, 2, 3, 4))}")
    out.append("</section>")
    return "".join(out)


OUTPUT_CHARS = 4000          # of each stream of one task, at most
OUTPUT_PAGE_CHARS = 2_000_000  # of all tasks' output together: a 10k-task run still opens


def _output_cell(r: TaskResult, cap: int) -> str:
    """The task's error and output: the first line, the streams (capped) one click away."""
    stdout, stderr = output_streams(r.output)
    shell = isinstance(r.output, dict) and "exit_code" in r.output
    parts = [(name, text) for name, text in (("error", r.error or ""), ("stdout" if shell else "output", stdout),
                                             ("stderr", stderr)) if text.strip()]
    if not parts:
        return ""
    first = one_line(r.error, 160) if r.error else one_line(output_summary(r.output), 160)
    body = "".join(f"<h4>{name}</h4><pre>{_e(truncate(text, cap, keep_tail=True))}</pre>" for name, text in parts)
    return f'<details class="out"><summary>{_e(first or parts[0][0])}</summary>{body}</details>'


def _task_table(state: PhaseState) -> str:
    if not state.task_results and not state.tasks_data:
        return ""
    descs, critical = descriptions(state), set(critical_ids(state))
    origin = execution_origin(state)
    cap = max(300, min(OUTPUT_CHARS, OUTPUT_PAGE_CHARS // max(1, 2 * len(state.task_results))))
    rows = []
    for i, r in enumerate(state.task_results):
        offset = offset_text(r, origin)
        rows.append(f'<tr id="task-{i}"{" class=crit" if r.task_id in critical else ""}>'
                    f'<td class="mono">{_e(r.task_id)}</td><td>{_e(r.agent)}</td><td>{_e(r.worker or "-")}</td>'
                    f'<td class="num">{_e(offset)}</td>'
                    f'<td class="num">{_e(fmt_ms(r.duration_ms) if not r.skipped else "-")}</td>'
                    f'<td class="num">{r.attempts}</td><td>{_badge(task_status(r))}</td>'
                    f'<td class="desc">{_e(one_line(descs.get(r.task_id, ""), 200))}</td>'
                    f'<td class="out{" err" if r.error else ""}">{_output_cell(r, cap)}</td></tr>')
    if not rows:  # planned but not executed: list the breakdown itself
        rows = [f'<tr><td class="mono">{_e(t.task_id)}</td><td>{_e(t.agent)}</td><td>-</td><td class="num">-</td>'
                f'<td class="num">-</td><td class="num">0</td><td>{_badge("pending")}</td>'
                f'<td class="desc">{_e(one_line(t.description, 200))}</td><td></td></tr>' for t in state.tasks_data]
    headers = ["task", "agent", "worker", "start", "duration", "attempts", "status", "description", "output / error"]
    note = ('<p class="sub">Click a task\'s output to read it (each stream capped at '
            f"{cap} characters here; the state file has it all).</p>")
    return f'<section id="tasks"><h2>Tasks</h2>{note}{_table(headers, rows, numeric=(3, 4, 5))}</section>'


def _changes(state: PhaseState) -> str:
    """Git workspaces: each task's change (files, and its diff one click away) and the integration branch."""
    changed = [r for r in state.task_results if r.changes is not None and r.changes.files]
    integration = state.integration
    if not changed and integration is None:
        return ""
    out = ['<section id="changes"><h2>Changes</h2>']
    if integration is not None:
        merged = ", ".join(f"<code>{_e(t)}</code>" for t in integration.merged) or "none"
        out.append(f'<p>Integration branch <code>{_e(integration.ref.removeprefix("refs/heads/"))}</code> '
                   f'(<code>{_e(integration.commit[:12])}</code>): merged {merged}.</p>')
        if integration.dropped:  # left out on purpose at the interactive phase-4 checkpoint
            dropped = ", ".join(f"<code>{_e(t)}</code>" for t in integration.dropped)
            out.append(f"<p>Dropped at the checkpoint: {dropped} (each change stays on its own ref).</p>")
        if integration.conflicts:
            rows = [f'<tr><td class="mono">{_e(c.task_id)}</td><td>{_e(", ".join(c.files))}</td>'
                    f'<td>{_e(", ".join(c.with_) or "the base")}</td><td>{_e(c.reason or "")}</td></tr>'
                    for c in integration.conflicts]
            out.append("<p>Left out of the integration (each change stays on its own ref):</p>"
                       + _table(["task", "files", "conflicts with", "why"], rows))
    for r in changed:
        files = ", ".join(f"+{f.added} -{f.deleted} {f.path}" for f in r.changes.files)
        cut = (f" (first {len(r.changes.patch)} of {r.changes.patch_bytes} bytes)"
               if r.changes.patch_bytes > len(r.changes.patch) else "")
        out.append(f'<details class="diff"><summary><code>{_e(r.task_id)}</code> '
                   f'<span class="meta">{_e(files)}</span></summary>'
                   f'<p class="sub"><code>{_e(r.changes.ref)}</code>{_e(cut)}</p>'
                   f"<pre>{_e(r.changes.patch)}</pre></details>")
    out.append("</section>")
    return "".join(out)


def _context_rows(ctx: TaskContext) -> list[str]:
    choices = {c.item_id: c for c in ctx.report}
    rows, seen = [], set()
    for item in ctx.items:
        seen.add(item.id)
        c = choices.get(item.id)
        preview = one_line(item.content, 300)
        rows.append(f'<tr><td class="mono" title="{_e(preview)}">{_e(item.source)}</td><td>{_e(item.kind)}</td>'
                    f'<td class="num">{item.tokens}</td><td class="num">{(c.score if c else item.score):.2f}</td>'
                    f'<td>{_e(c.requirement if c and c.requirement else "-")}</td>'
                    f'<td>{_e(c.reason if c else "")}</td></tr>')
    for c in ctx.report:
        if c.item_id not in seen:
            rows.append(f'<tr><td class="mono">{_e(c.source)}</td><td>-</td><td class="num">{c.tokens}</td>'
                        f'<td class="num">{c.score:.2f}</td><td>{_e(c.requirement or "-")}</td>'
                        f"<td>{_e(c.reason)}</td></tr>")
    return rows


def _contexts(state: PhaseState) -> str:
    out = ['<section id="context"><h2>Context per task</h2>']
    g = state.global_context
    if g is not None:
        hits = ", ".join(f"{_e(q)} ({g.per_query_hits.get(q, 0)})" for q in g.queries) or "-"
        timings = ", ".join(f"{_e(k)} {_e(fmt_ms(v))}" for k, v in g.retriever_timings_ms.items()) or "-"
        out.append(f'<p class="sub">Global context: {len(g.items)} items, {g.total_tokens} of '
                   f"{g.budget_tokens} tokens. Queries: {hits}. Retrievers: {timings}.</p>")
        if g.errors:
            out.append(f'<ul class="plain err">{"".join(f"<li>{_e(x)}</li>" for x in g.errors)}</ul>')
    if not state.task_contexts:
        out.append('<p class="empty">No per-task context in this state (phase 3 has not run, or context '
                   "gathering was off).</p></section>")
        return "".join(out)
    order = [t.task_id for t in state.tasks_data if t.task_id in state.task_contexts]
    order += [tid for tid in state.task_contexts if tid not in order]
    headers = ["source", "kind", "tokens", "score", "requirement", "reason"]
    for tid in order:
        ctx = state.task_contexts[tid]
        meter = (f'<meter min="0" max="{max(ctx.budget_tokens, 1)}" value="{ctx.total_tokens}"></meter>'
                 if ctx.budget_tokens else "")
        meta = f"{len(ctx.items)} items · {ctx.total_tokens} / {ctx.budget_tokens or '-'} tokens"
        unmatched = (f'<p class="sub">Unmatched requirements: {_e(", ".join(ctx.unmatched_requirements))}</p>'
                     if ctx.unmatched_requirements else "")
        rows = _context_rows(ctx)
        body = _table(headers, rows, numeric=(2, 3)) if rows else '<p class="empty">No items chosen.</p>'
        out.append(f'<details{" open" if len(order) <= OPEN_CONTEXTS else ""}><summary><code>{_e(tid)}</code><span class="meta">{_e(meta)}</span> {meter}'
                   f"</summary>{unmatched}{body}</details>")
    out.append("</section>")
    return "".join(out)


def render_html(state: PhaseState) -> str:
    """The whole report as one HTML document: inline CSS, JS and SVG, nothing fetched."""
    sections = [_header(state), _phases(state), _timeline(state), _critical_path(state), _quorum(state),
                _spend(state), _task_table(state), _changes(state), _contexts(state)]
    saved = f" from the state saved at {_e(state.saved_at)}" if state.saved_at else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>dispatch run {_e(state.run_id)}</title><style>{CSS}</style></head>\n"
            f"<body>{SVG_DEFS}<main>{''.join(sections)}"
            f"<footer>dispatch report{saved}.</footer></main>"
            f"<script>{JS}</script></body></html>\n")
