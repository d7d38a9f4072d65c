"""Phase 3: requirement kinds, ranking, the per-task budget, the report, no context."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispatch.config import ContextOptions, DispatchConfig
from dispatch.context import filter_contexts, gather_context
from dispatch.context.filtering import parse_requirement
from dispatch.models import DispatchInput, GlobalContext, TaskContext, TaskSpec

FIXTURE = Path(__file__).parent / "fixtures" / "context_repo"
QUERIES = ["database writer effect node", "ONEX architecture patterns", "LRU cache eviction", "retry backoff"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filtering") / "repo"
    shutil.copytree(FIXTURE, root)
    (root / ".gitignore").write_text(".env\n")
    (root / ".env").write_text("API_KEY=do-not-share\n")
    (root / "logo.png").write_bytes(b"\x89PNG\x00\x00")
    (root / "src" / "pricing.py").write_text("".join(f"PRICE_{n} = {n}\n" for n in range(1, 31)))
    return root


@pytest.fixture(scope="module")
def ctx(repo: Path) -> GlobalContext:
    request = DispatchInput(workspace_path=str(repo), rag_queries=QUERIES,
                            tasks=[TaskSpec(task_id="x", agent="coder", description="x")])
    return gather_context(request, DispatchConfig(), cache_dir=repo.parent / "cache")


def config(per_task: int = 5000) -> DispatchConfig:
    return DispatchConfig(context=ContextOptions(per_task_budget_tokens=per_task))


def task(requirements: list[str], description: str = "Implement the change", **input_data) -> TaskSpec:
    return TaskSpec(task_id="t", agent="coder", description=description, input_data=input_data,
                    context_requirements=requirements)


def run(repo: Path, ctx: GlobalContext | None, t: TaskSpec, per_task: int = 5000) -> TaskContext:
    return filter_contexts([t], ctx, config(per_task), workspace_path=str(repo))["t"]


def sources(tc: TaskContext) -> list[str]:
    return [i.source for i in tc.items]


def test_requirement_kinds_parse() -> None:
    assert parse_requirement("rag:ONEX patterns").kind == "rag"
    assert parse_requirement("file: src/db.py").value == "src/db.py"
    assert parse_requirement("structure:").kind == "structure"
    assert parse_requirement("just some words").value == "just some words"
    bare = parse_requirement("Note: keep it short")
    assert (bare.kind, bare.value) == ("rag", "Note: keep it short")


def test_rag_requirement_takes_items_gathered_for_that_query(repo, ctx) -> None:
    tc = run(repo, ctx, task(["rag:LRU cache eviction"]))
    assert sources(tc)[0] == "src/cache.py"
    choice = tc.report[0]
    assert choice.requirement == "rag:LRU cache eviction" and choice.item_id == tc.items[0].id
    assert choice.reason.startswith("gathered for query 'LRU cache eviction'") and choice.tokens == tc.items[0].tokens
    assert tc.unmatched_requirements == []


def test_bare_text_is_a_rag_requirement_matched_by_terms(repo, ctx) -> None:
    tc = run(repo, ctx, task(["transaction rollback for the writer"]))
    assert sources(tc)[0] == "src/db_writer.py"
    assert tc.report[0].reason.startswith("matches query terms") and "rollback" in tc.report[0].reason


def test_file_requirement_matches_gathered_items_by_path_and_glob(repo, ctx) -> None:
    tc = run(repo, ctx, task(["file:src/cache.py"]))
    assert sources(tc) == ["src/cache.py"] and tc.report[0].reason.startswith("path matches 'src/cache.py'")
    globbed = run(repo, ctx, task(["file:src/*.py"]))
    assert {"src/cache.py", "src/db_writer.py"} <= set(sources(globbed))
    assert all(s.startswith("src/") for s in sources(globbed))


def test_file_not_gathered_is_read_from_the_workspace(repo, ctx) -> None:
    assert "src/pricing.py" not in {i.source for i in ctx.items}
    tc = run(repo, ctx, task(["file:src/pricing.py", "file:./src/pricing.py:5-9"]))
    whole, part = tc.items
    assert whole.id == "src/pricing.py:1-30" and whole.content == (repo / "src/pricing.py").read_text()
    assert part.id == "src/pricing.py:5-9" and part.kind == "file"
    assert part.content == "PRICE_5 = 5\nPRICE_6 = 6\nPRICE_7 = 7\nPRICE_8 = 8\nPRICE_9 = 9\n"
    assert tc.report[0].reason.startswith("read from the workspace")


@pytest.mark.parametrize("requirement", ["file:.env", "file:logo.png", "file:../outside.py", "file:missing.py",
                                         "file:/etc/passwd"])
def test_file_requirements_that_must_not_be_read(repo, ctx, requirement) -> None:
    (repo.parent / "outside.py").write_text("secret = 1\n")
    tc = run(repo, ctx, task([requirement]))
    assert tc.items == [] and tc.unmatched_requirements == [requirement]


def test_pattern_requirement_matches_by_name_words(repo, ctx) -> None:
    tc = run(repo, ctx, task(["pattern:onex-architecture"]))
    assert sources(tc)[0] == "docs/architecture.md"
    assert tc.report[0].reason.startswith("pattern terms onex, architecture")


def test_structure_requirement(repo, ctx) -> None:
    tc = run(repo, ctx, task(["structure:"]))
    assert [i.kind for i in tc.items] == ["structure"] and tc.report[0].reason.startswith("workspace structure")


def test_unmatched_requirements_are_listed(repo, ctx) -> None:
    tc = run(repo, ctx, task(["rag:kubernetes helm chart", "pattern:zzz-qqq", "file:src/cache.py"]))
    assert tc.unmatched_requirements == ["rag:kubernetes helm chart", "pattern:zzz-qqq"]
    assert sources(tc) == ["src/cache.py"]


def test_named_files_come_first_then_relevance_to_the_task(repo, ctx) -> None:
    t = task(["rag:ONEX architecture patterns", "file:src/cache.py"],
             description="Write the database writer effect node", node_type="Effect")
    tc = run(repo, ctx, t)
    assert sources(tc)[0] == "src/cache.py"
    assert tc.report[0].score > tc.report[1].score
    assert len(set(i.id for i in tc.items)) == len(tc.items)


def test_task_without_requirements_gets_what_its_description_needs(repo, ctx) -> None:
    tc = run(repo, ctx, task([], description="Tune the LRU cache eviction and TTL"))
    assert sources(tc)[0] == "src/cache.py"
    assert tc.report[0].requirement is None and tc.report[0].reason.startswith("relevant to the task description")


def test_per_task_budget_is_never_exceeded_and_the_report_says_so(repo, ctx) -> None:
    t = task(["rag:ONEX architecture patterns", "rag:database writer effect node", "structure:"])
    for budget in (1, 20, 60, 150, 400, 1000):
        tc = run(repo, ctx, t, per_task=budget)
        assert tc.total_tokens == sum(i.tokens for i in tc.items) <= budget == tc.budget_tokens
        kept = [c for c in tc.report if not c.reason.startswith("not included")]
        assert [c.item_id for c in kept] == [i.id for i in tc.items]
    tc = run(repo, ctx, t, per_task=150)
    assert any("trimmed to fit the budget" in c.reason for c in tc.report)
    structure_tokens = next(i.tokens for i in ctx.items if i.kind == "structure")
    squeezed = run(repo, ctx, task(["structure:", "rag:LRU cache eviction"]), per_task=structure_tokens)
    assert [i.kind for i in squeezed.items] == ["structure"] and squeezed.unmatched_requirements == []
    last = squeezed.report[-1]
    assert last.requirement == "rag:LRU cache eviction" and last.tokens == 0
    assert last.reason.startswith("not included: over the per-task budget")


def test_no_global_context_still_reads_named_files(repo) -> None:
    t = task(["file:src/cache.py", "rag:cache", "pattern:lru", "structure:"])
    tc = run(repo, None, t)
    assert sources(tc) == ["src/cache.py"] and tc.items[0].kind == "file"
    assert tc.unmatched_requirements == ["rag:cache", "pattern:lru", "structure:"]
    nowhere = filter_contexts([t], None, config(), workspace_path=str(repo / "missing"))["t"]
    assert nowhere.items == [] and len(nowhere.unmatched_requirements) == 4


def test_counts_from_a_saved_state_are_not_trusted(repo, ctx) -> None:
    tampered = GlobalContext.model_validate_json(ctx.model_dump_json())
    for item in tampered.items:
        item.tokens = 1
    tc = run(repo, tampered, task(["rag:ONEX architecture patterns", "rag:LRU cache eviction"]), per_task=200)
    assert tc.total_tokens <= 200 and all(i.tokens > 1 for i in tc.items)


def test_a_thousand_tasks_each_get_their_context(repo, ctx) -> None:
    kinds = [["rag:LRU cache eviction"], ["file:src/*.py"], ["pattern:onex-architecture", "structure:"],
             ["file:src/pricing.py"], []]
    tasks = [TaskSpec(task_id=f"t{n}", agent="coder", description=f"Task {n}: database writer and cache tuning",
                      input_data={"n": n, "area": "inventory"}, context_requirements=kinds[n % len(kinds)])
             for n in range(1000)]
    out = filter_contexts(tasks, ctx, config(per_task=800), workspace_path=str(repo))
    assert list(out) == [t.task_id for t in tasks]
    assert all(tc.items and tc.total_tokens <= 800 for tc in out.values())
    assert out["t3"].items[0].source == "src/pricing.py"


def test_an_item_matched_twice_is_given_once_and_says_so(repo, ctx) -> None:
    tc = run(repo, ctx, task(["rag:LRU cache eviction", "file:src/cache.py"]))
    cache_items = [i for i in tc.items if i.source == "src/cache.py"]
    assert len(cache_items) == 1
    choice = next(c for c in tc.report if c.item_id == cache_items[0].id)
    assert choice.requirement == "file:src/cache.py" and "also matches rag:LRU cache eviction" in choice.reason
