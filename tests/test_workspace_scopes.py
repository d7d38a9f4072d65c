"""Declared write scopes (overlap of gitignore-style globs, pairs without a dependency path,
serializing them without a cycle) and the ``[workspace]`` options with per-task overrides."""
from __future__ import annotations

import pathspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.errors import InputError
from dispatch.models import TaskSpec
from dispatch.workspace import WorkspaceOptions, for_task, overlapping_scopes, patterns_overlap, serialize_overlaps
from dispatch.workspace.git import ref_component


def spec(task_id: str, writes=(), deps=(), **extra) -> TaskSpec:
    return TaskSpec(task_id=task_id, agent="shell", description="d", writes=list(writes), dependencies=list(deps),
                    **extra)


@pytest.mark.parametrize("a, b, expected", [
    ("src/calc.py", "src/calc.py", True),
    ("calc.py", "src/calc.py", True),  # no slash: any depth
    ("/calc.py", "src/calc.py", False),  # anchored
    ("docs/**", "docs/guide/intro.md", True),
    ("docs", "docs/a.md", True),  # a directory covers its contents
    ("docs/", "docs/a.md", True),
    ("*.py", "src/calc.py", True),
    ("*.py", "*.md", False),
    ("test_*", "*.py", True),
    ("a/*.py", "b/*.py", False),
    ("src/*.py", "src/a/b.py", False),  # * stays inside one segment
    ("src/**/x.py", "src/a/b/x.py", True),
    ("src/[ab].py", "src/c.py", True),  # classes: conservatively "may overlap"
    ("!src/**", "src/a.py", False),  # negations are ignored
    ("# comment", "src/a.py", False),
])
def test_pattern_overlap_table(a: str, b: str, expected: bool):
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


DIR = st.sampled_from(["src", "docs", "lib", "a", "b"])
FILE = st.sampled_from(["calc.py", "x.md", "test_a.py", "README", "b.txt", "a"])
SEGMENT_GLOB = st.sampled_from(["*", "*.py", "test_*", "*.md", "?", "calc.*", "src", "docs", "a", "x.md"])


@st.composite
def glob(draw) -> str:
    parts = draw(st.lists(st.one_of(SEGMENT_GLOB, st.just("**")), min_size=1, max_size=3))
    lead = draw(st.sampled_from(["", "/"]))
    trail = draw(st.sampled_from(["", "/"]))
    return lead + "/".join(parts) + trail


@st.composite
def path(draw) -> str:
    return "/".join(draw(st.lists(DIR, max_size=3)) + [draw(FILE)])


@settings(max_examples=600, deadline=None)
@given(glob(), glob(), st.lists(path(), min_size=1, max_size=8))
def test_no_overlap_is_never_claimed_when_a_path_matches_both(a: str, b: str, paths: list[str]):
    """Soundness against pathspec (git's own matching rules): if some file matches both, we say overlap.
    Directory names here have no dot, matching the documented reading of ``*.py`` as files."""
    spec_a, spec_b = pathspec.GitIgnoreSpec.from_lines([a]), pathspec.GitIgnoreSpec.from_lines([b])
    if any(spec_a.match_file(p) and spec_b.match_file(p) for p in paths):
        assert patterns_overlap(a, b), (a, b, paths)


def test_overlapping_pairs_skip_tasks_ordered_by_a_dependency_path():
    tasks = [spec("a", ["src/calc.py"]), spec("b", ["src/*.py"]), spec("c", ["docs/**"]),
             spec("d", ["src/calc.py"], deps=["e"]), spec("e", ["lib/**"], deps=["a"]), spec("f")]
    pairs = overlapping_scopes(tasks)
    assert [(p.first, p.second, p.globs) for p in pairs] == [("a", "b", ["src/calc.py", "src/*.py"]),
                                                              ("b", "d", ["src/*.py", "src/calc.py"])]
    assert "no dependency orders them" in pairs[0].describe()


def test_serialize_orders_later_after_earlier_and_never_makes_a_cycle():
    # x depends on z; pairs (x,y) and (y,z) both overlap: ordering y after x already orders z before y
    tasks = [spec("x", ["f"], deps=["z"]), spec("y", ["f"]), spec("z", ["f"])]
    pairs = overlapping_scopes(tasks)
    assert [(p.first, p.second) for p in pairs] == [("x", "y"), ("y", "z")]
    serialized = serialize_overlaps(tasks, pairs)
    assert [t.dependencies for t in serialized] == [["z"], ["x"], []]
    assert overlapping_scopes(serialized) == []
    assert tasks[1].dependencies == []  # the input is not modified


def test_options_forbid_typos_and_tasks_override_three_keys():
    with pytest.raises(Exception, match="isolaton"):
        WorkspaceOptions.model_validate({"isolaton": "git"})
    base = WorkspaceOptions(setup=["npm", "ci"], remote="git://h/r.git")
    task = spec("t", workspace={"keep": True, "setup": ["make"]})
    merged = for_task(base, task)
    assert merged.keep and merged.setup == ["make"] and merged.remote == "git://h/r.git"
    assert for_task(base, spec("u")) is base
    with pytest.raises(InputError, match=r"tasks\[3\]\.workspace\.remote: Extra inputs"):
        for_task(base, spec("v", workspace={"remote": "x"}), "tasks[3]")
    with pytest.raises(InputError, match="expected an object"):
        for_task(base, spec("w", workspace="git"), "tasks[0]")


def test_ref_components():
    assert ref_component("gen-db_writer.v2") == "gen-db_writer.v2"
    odd = [ref_component(name) for name in ("a b", "a/b", "a..b", ".hidden", "x.lock", "a b ")]
    assert len(set(odd)) == len(odd) and all(" " not in o and "/" not in o and ".." not in o for o in odd)


def test_a_remote_with_a_password_is_refused():
    with pytest.raises(Exception, match="holds a password"):
        WorkspaceOptions(remote="https://me:hunter2@git.example/r.git")
    assert WorkspaceOptions(remote="ssh://git@git.example/r.git").remote == "ssh://git@git.example/r.git"
