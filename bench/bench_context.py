"""Context phases on a real corpus: index build, incremental update, queries, phase 3.

    .venv/bin/python bench/bench_context.py [--corpus PATH] [--queries 200] [--naive 20] [--tasks 1000]

The corpus (default: this venv's site-packages) is copied to a temporary folder
first, so the incremental step can really edit 10 files without touching the
original.  "Cold" means an empty index with the files in the OS page cache
(they were just copied), which is also what the naive scan sees.

Rows: ``value`` is ours, ``baseline`` the target or the naive scan, ``ratio``
is value / baseline (below 1 is under the target, or faster than the scan).
Targets (issue 3): 10k files cold < 10 s (so >= 1000 files/s), incremental
< 1 s, query p50 < 5 ms, phase 3 for 1000 tasks < 1 s.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatch.config import ContextOptions, DispatchConfig  # noqa: E402
from dispatch.context import filter_contexts, gather_context  # noqa: E402
from dispatch.context.index import WorkspaceIndex  # noqa: E402
from dispatch.common.text import as_text  # noqa: E402
from dispatch.context.terms import query_terms  # noqa: E402
from dispatch.context.walk import iter_files, looks_binary  # noqa: E402
from dispatch.models import DispatchInput, TaskSpec  # noqa: E402

DEFAULT_CORPUS = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
TOP_K = 8


def row(name: str, value: float, unit: str, baseline: float, target: str) -> dict:
    return {"name": name, "value": round(value, 3), "unit": unit, "baseline": round(baseline, 3),
            "ratio": round(value / baseline, 4) if baseline else None, "target": target}


def make_queries(ix: WorkspaceIndex, root: Path, n: int, seed: int = 7) -> list[str]:
    """Queries of 2-4 key terms taken from random lines of random indexed files."""
    rng = random.Random(seed)
    paths = [p for p, _, status in ix.files() if status == "text"]
    queries: list[str] = []
    while len(queries) < n and paths:
        lines = (root / rng.choice(paths)).read_text(errors="replace").splitlines()
        if not lines:
            continue
        terms = [t for t in query_terms(rng.choice(lines)) if t.isalpha() and len(t) > 2]
        if len(terms) >= 2:
            queries.append(" ".join(terms[: rng.randint(2, 4)]))
    return queries


def naive_search(root: Path, query: str, max_bytes: int = 1_000_000) -> list[tuple[int, str]]:
    """What a grep-like tool does: read every file, count the query's terms, keep the best."""
    terms = query_terms(query)
    scored = []
    for entry in iter_files(root):
        if entry.size > max_bytes:
            continue
        with open(entry.path, "rb") as fh:
            data = fh.read()
        if looks_binary(data):
            continue
        text = as_text(data).lower()
        score = sum(text.count(t) for t in terms)
        if score:
            scored.append((score, entry.rel))
    scored.sort(reverse=True)
    return scored[:TOP_K]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(corpus: Path, queries: int = 200, naive: int = 20, tasks: int = 1000, seed: int = 7) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        root, cache = Path(tmp) / "corpus", Path(tmp) / "index"
        shutil.copytree(corpus, root, symlinks=True)

        with WorkspaceIndex(root, cache) as ix:
            t0 = time.perf_counter()
            cold = ix.update()
            cold_s = time.perf_counter() - t0
            label = f"{cold.files_seen} files, {cold.files_indexed} text, {ix.chunk_count()} chunks"
            rows.append(row(f"cold index build ({label})", cold_s, "s", cold.files_seen / 1000,
                            "10k files < 10 s"))
            rows.append(row("cold index build rate", cold.files_seen / cold_s, "f/s", 1000, ">= 1000 files/s"))

            t0 = time.perf_counter()
            ix.update()
            rows.append(row("re-index, nothing changed (stat every file)", time.perf_counter() - t0, "s", 1.0, "< 1 s"))

            edited = [p for p, _, status in ix.files() if status == "text"][:: max(1, cold.files_indexed // 10)][:10]
            for n, rel in enumerate(edited):
                with open(root / rel, "a", encoding="utf-8") as fh:
                    fh.write(f"\n# bench edit {n}: incremental\n")
            t0 = time.perf_counter()
            inc = ix.update()
            inc_s = time.perf_counter() - t0
            assert inc.read == len(edited) == inc.updated, inc
            rows.append(row(f"incremental re-index after editing {len(edited)} files", inc_s, "s", 1.0, "< 1 s"))

            qs = make_queries(ix, root, queries, seed)
            for q in qs[-10:]:
                ix.query(q, TOP_K)  # warm the index's pages (and its term statistics)
            times = []
            for q in qs:
                t0 = time.perf_counter()
                ix.query(q, TOP_K)
                times.append((time.perf_counter() - t0) * 1000)
            p50, p95 = percentile(times, 0.5), percentile(times, 0.95)

        naive_times = []
        for q in qs[:naive]:
            t0 = time.perf_counter()
            naive_search(root, q)
            naive_times.append((time.perf_counter() - t0) * 1000)
        naive_p50 = percentile(naive_times, 0.5)
        rows.append(row(f"query p50 over {len(qs)} queries (baseline: target)", p50, "ms", 5.0, "< 5 ms"))
        rows.append(row(f"query p95 over {len(qs)} queries", p95, "ms", 5.0, "(reference)"))
        rows.append(row(f"query p50 indexed vs naive scan p50 ({len(naive_times)} queries)", p50, "ms",
                        naive_p50, "(reference)"))
        rows.append(row("naive scan / indexed query p50 (speed-up)", naive_p50 / p50, "x", 1.0, "(reference)"))

        request = DispatchInput(workspace_path=str(root), rag_queries=qs[:6],
                                tasks=[TaskSpec(task_id="x", agent="coder", description="x")])
        config = DispatchConfig(context=ContextOptions(budget_tokens=5000, per_task_budget_tokens=2000))
        t0 = time.perf_counter()
        ctx = gather_context(request, config, cache_dir=cache)
        rows.append(row(f"phase 0 gather, warm index ({len(ctx.items)} items, {ctx.total_tokens} tokens)",
                        (time.perf_counter() - t0) * 1000, "ms", 1000.0, "(reference)"))

        rng = random.Random(seed)
        gathered = [i.source for i in ctx.items if i.kind != "structure"]
        shapes = [lambda: [f"rag:{rng.choice(qs[:6])}"], lambda: [f"file:{rng.choice(gathered)}"],
                  lambda: [f"pattern:{rng.choice(qs).replace(' ', '-')}", "structure:"],
                  lambda: [rng.choice(qs), f"file:{rng.choice(gathered).rsplit('/', 1)[0]}/*"], lambda: []]
        task_list = [TaskSpec(task_id=f"t{n}", agent="coder", description=f"Work on {rng.choice(qs)}",
                              input_data={"area": rng.choice(qs)}, context_requirements=shapes[n % len(shapes)]())
                     for n in range(tasks)]
        t0 = time.perf_counter()
        out = filter_contexts(task_list, ctx, config, workspace_path=str(root))
        p3 = time.perf_counter() - t0
        assert all(tc.total_tokens <= 2000 for tc in out.values())
        rows.append(row(f"phase 3 filtering, {tasks} tasks", p3, "s", 1.0, "< 1 s"))
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['name']:<72} {r['value']:>10} {r['unit']:<4} baseline {r['baseline']:>9} "
              f"ratio {r['ratio']!s:>8}  target {r['target']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--naive", type=int, default=20, help="queries also timed with the naive scan")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    a = parser.parse_args()
    print(f"corpus: {a.corpus}", flush=True)
    print_rows(run(a.corpus, a.queries, a.naive, a.tasks, a.seed))


if __name__ == "__main__":
    main()
