"""The report's stylesheet, script and SVG defs, inlined into every page.

Inline rather than shipped as files: the report is one file you can mail or
attach to an issue, and it opens without a network.  The page's
Content-Security-Policy allows exactly these two blocks (by hash), so anything
that slipped past escaping still could not run.
"""
from __future__ import annotations

import base64
import hashlib

CSS = """
:root { --bg:#f5f6f8; --card:#fff; --ink:#1f2328; --muted:#656d76; --line:#d8dee4; --band:#f6f8fa;
  --ok:#2da44e; --ok-dark:#1a7f37; --fail:#e5534b; --fail-dark:#b62324; --skip:#afb8c1; --crit:#f59f00; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1260px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; font-weight: 600; }
h1 code { font-size: 20px; }
h2 { font-size: 16px; margin: 0 0 12px; font-weight: 600; }
h3 { font-size: 14px; margin: 16px 0 8px; font-weight: 600; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
  margin: 16px 0; }
.sub { color: var(--muted); margin: 0 0 12px; }
.facts { display: flex; flex-wrap: wrap; gap: 10px 28px; margin: 14px 0 0; padding: 0; list-style: none; }
.facts li { display: flex; flex-direction: column; }
.facts .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.facts .v { font-size: 17px; font-weight: 600; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  color: #fff; background: var(--muted); vertical-align: middle; }
.badge.success, .badge.PASS, .badge.succeeded { background: var(--ok-dark); }
.badge.failed, .badge.FAIL, .badge.cancelled { background: var(--fail-dark); }
.badge.skipped, .badge.abstained { background: #8c959f; }
.badge.RETRY, .badge.running, .badge.pending { background: #bf8700; }
.legend { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin: 0 0 8px;
  color: var(--muted); font-size: 12.5px; }
.legend i { display: inline-block; width: 14px; height: 10px; border-radius: 2px; margin-right: 6px;
  vertical-align: -1px; }
.legend .success { background: var(--ok); } .legend .failed { background: var(--fail); }
.legend .skipped { background: repeating-linear-gradient(45deg, #e6e9ec 0 3px, var(--skip) 3px 5px); }
.legend .crit { background: transparent; border: 2.5px solid var(--crit); height: 12px; }
.legend label { margin-left: auto; cursor: pointer; color: var(--ink); }
.chart { overflow-x: auto; }
svg.gantt { display: block; width: 100%; height: auto; min-width: 900px;
  font: 11px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
.gantt .band { fill: transparent; } .gantt .band.odd { fill: var(--band); }
.gantt .grid { stroke: #eaeef2; } .gantt .divider { stroke: var(--line); }
.gantt .tick { fill: var(--muted); text-anchor: middle; }
.gantt .axis-label { fill: var(--muted); font-style: italic; }
.gantt .lead-in rect { fill: url(#hatch); opacity: .45; } .gantt .lead-in text { fill: var(--muted); }
.out summary { color: var(--ink); } .out pre { max-height: 320px; overflow: auto; background: var(--band);
  padding: 6px 8px; border-radius: 4px; } .out h4 { margin: 6px 0 0; font-size: 12px; color: var(--muted); }
td.out { max-width: 420px; overflow-wrap: anywhere; }
.gantt .row-label { fill: var(--ink); font-size: 12px; font-weight: 500; }
.gantt .row-note { fill: var(--muted); font-style: italic; }
.gantt .bar rect { stroke-width: 1; }
.gantt .s-success rect { fill: var(--ok); stroke: var(--ok-dark); }
.gantt .s-failed rect { fill: var(--fail); stroke: var(--fail-dark); }
.gantt .s-skipped rect { fill: url(#hatch); stroke: var(--skip); }
.gantt .crit rect { stroke: var(--crit); stroke-width: 2.5; }
.gantt .bar-label { fill: #fff; pointer-events: none; font-weight: 500; }
.gantt .s-skipped .bar-label { fill: #424a53; }
.gantt .bar-note { fill: var(--muted); pointer-events: none; }
.gantt .bar:hover rect, .gantt a:focus .bar rect { filter: brightness(1.12); stroke-width: 2; }
.gantt .crit-link { fill: none; stroke: var(--crit); stroke-width: 1.6; stroke-dasharray: 4 3; pointer-events: none; }
body.only-crit .gantt .bar:not(.crit) { opacity: .18; }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; border-bottom-color: var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.mono { white-space: nowrap; }
td.err { color: var(--fail-dark); max-width: 380px; overflow-wrap: anywhere; }
td.muted { color: var(--muted); }
td.desc { max-width: 320px; overflow-wrap: anywhere; }
tr.crit td:first-child { box-shadow: inset 3px 0 0 var(--crit); padding-left: 8px; }
tr:target td { background: #fff8c5; }
.path { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 0; padding: 0; list-style: none; }
.path li { display: flex; align-items: center; gap: 6px; }
.path li + li::before { content: "\\2192"; color: var(--crit); font-weight: 700; }
.path a { text-decoration: none; color: var(--ink); border: 2px solid var(--crit); border-radius: 6px;
  padding: 2px 8px; background: #fff9db; }
.path a.failed { background: #ffebe9; } .path a.skipped { background: #eaeef2; }
.path small { color: var(--muted); }
details { border-top: 1px solid #eaeef2; padding: 6px 0; }
summary { cursor: pointer; }
summary .meta { color: var(--muted); margin-left: 8px; font-size: 12.5px; }
meter { width: 120px; height: 10px; vertical-align: middle; }
ul.plain { margin: 4px 0; padding-left: 18px; }
ul.err { color: var(--fail-dark); }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0 0; font-size: 12px; }
.tip { position: fixed; z-index: 10; max-width: 460px; padding: 7px 10px; border-radius: 6px;
  background: #24292f; color: #f6f8fa; font-size: 12.5px; line-height: 1.4; white-space: pre-line;
  pointer-events: none; box-shadow: 0 4px 14px rgba(0,0,0,.25); overflow-wrap: anywhere; }
.tip[hidden] { display: none; }
svg.defs { position: absolute; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
"""

JS = """
(function () {
  "use strict";
  var tip = document.createElement("div");
  tip.className = "tip";
  tip.id = "tip";
  tip.setAttribute("role", "tooltip");
  tip.hidden = true;
  document.body.appendChild(tip);

  // One tooltip for every bar: move each SVG <title> (the no-script fallback) into data-tip,
  // so the browser's own tooltip does not show on top of ours.
  var bars = document.querySelectorAll(".gantt [data-key]");
  Array.prototype.forEach.call(bars, function (bar) {
    var title = bar.querySelector("title");
    if (title) {
      bar.setAttribute("data-tip", title.textContent);
      title.parentNode.removeChild(title);
    }
  });

  function place(x, y) {
    var pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    var left = x + pad, top = y + pad;
    if (left + w > window.innerWidth - 4) { left = x - w - pad; }
    if (top + h > window.innerHeight - 4) { top = y - h - pad; }
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = Math.max(4, top) + "px";
  }
  function show(el, x, y) {
    tip.textContent = el.getAttribute("data-tip");
    tip.hidden = false;
    place(x, y);
  }
  document.addEventListener("mousemove", function (ev) {
    var el = ev.target.closest ? ev.target.closest("[data-tip]") : null;
    if (el) { show(el, ev.clientX, ev.clientY); } else { tip.hidden = true; }
  });
  document.addEventListener("focusin", function (ev) {
    var el = ev.target.querySelector ? ev.target.querySelector("[data-tip]") : null;
    if (!el) { tip.hidden = true; return; }
    var r = el.getBoundingClientRect();
    show(el, r.left, r.bottom);
  });
  document.addEventListener("focusout", function () { tip.hidden = true; });

  var toggle = document.getElementById("only-crit");
  if (toggle) {
    toggle.addEventListener("change", function () {
      document.body.classList.toggle("only-crit", toggle.checked);
    });
  }
  document.body.setAttribute("data-ready", String(bars.length));
})();
"""

SVG_DEFS = ('<svg width="0" height="0" aria-hidden="true" focusable="false" class="defs">'
            '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eaeef2"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#afb8c1" stroke-width="2.5"/></pattern></defs></svg>')


def csp_hash(source: str) -> str:
    """The CSP source expression allowing exactly this inline block."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src {csp_hash(CSS)}; script-src {csp_hash(JS)}; "
                           "img-src data:; base-uri 'none'; form-action 'none'")
