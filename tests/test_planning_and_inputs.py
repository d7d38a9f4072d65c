"""Input reading and phase-2 planning, without Celery."""
import json

import pytest

from dispatch.errors import InputError
from dispatch.pipeline.inputs import input_json_schema, parse_input
from dispatch.models import TaskSpec
from dispatch.planning.graph import GraphError, check_graph, critical_path, plan_tasks, topological_levels


def task(tid, *deps, agent="echo"):
    return TaskSpec(task_id=tid, agent=agent, description=f"do {tid}", dependencies=list(deps))


def doc(*tasks, **extra):
    return json.dumps({"tasks": [t if isinstance(t, dict) else t.model_dump() for t in tasks], **extra})


def test_levels_and_critical_path_of_a_diamond():
    tasks = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e")]
    assert topological_levels(tasks) == [["a", "e"], ["b", "c"], ["d"]]
    assert critical_path(tasks) == ["a", "b", "d"]


def test_plan_resolves_agents_and_reports_unknown_ones_with_their_path():
    tasks = [task("a"), task("b", "a", agent="ghost")]
    plan = plan_tasks(tasks[:1], lambda name: name)
    assert plan.agents == {"a": "echo"} and plan.critical_path_length == 1

    def resolve(name):
        if name != "echo":
            raise ValueError(f"unknown agent '{name}' (known: echo, sleep)")
        return name
    with pytest.raises(GraphError, match=r"tasks\[1\]\.agent: unknown agent 'ghost' \(known: echo, sleep\)"):
        plan_tasks(tasks, resolve)


def test_cycle_is_reported_with_its_members():
    with pytest.raises(GraphError) as info:
        check_graph([task("a", "c"), task("b", "a"), task("c", "b"), task("d")])
    message = str(info.value)
    assert "cycle" in message and all(f"{m}" in message for m in ("a", "b", "c")) and "d" not in message.split(":")[-1]


def test_long_chain_does_not_recurse():
    tasks = [task("t0")] + [task(f"t{i}", f"t{i-1}") for i in range(1, 5000)]
    check_graph(tasks)
    assert len(critical_path(tasks)) == 5000


@pytest.mark.parametrize("text, message", [
    ("", "no input"),
    ("   \n", "no input"),
    ('{"tasks": [', "malformed JSON at line 1, column"),
    ('{\n  "tasks": [\n    {"task_id": "a",}\n  ]\n}', "line 3, column"),
    ("[1, 2]", "expected a JSON object"),
    ('{"user_prompt": "x"}', "tasks: field required"),
    ('{"tasks": []}', "empty"),
    ('{"tasks": [{"task_id": "a", "agent": "echo"}]}', r"tasks\[0\]\.description: Field required"),
    (doc(task("a"), task("a")), r"tasks\[1\]\.task_id: duplicate id 'a'"),
    (doc(task("a"), task("b"), task("c", "x")), r"tasks\[2\]\.dependencies: unknown task 'x'"),
    (doc(task("a", "b"), task("b", "a")), "cycle"),
    (doc(task("a", "a")), "depends on itself"),
    ('{"tasks": [{"task_id": "a", "agent": "echo", "description": "d", "dependencies": "b"}]}',
     r"tasks\[0\]\.dependencies"),
])
def test_bad_input_names_the_fault(text, message):
    with pytest.raises(InputError, match=message) as info:
        parse_input(text)
    assert info.value.exit_code == 2


def test_unknown_keys_are_kept_for_agents():
    request = parse_input(json.dumps({"tasks": [{**task("a").model_dump(), "priority": 3}], "team": "db"}))
    assert request.tasks[0].model_extra == {"priority": 3}
    assert request.model_extra == {"team": "db"}


def test_json_schema_describes_the_input():
    schema = input_json_schema()
    assert schema["required"] == ["tasks"]
    assert "TaskSpec" in json.dumps(schema) and "task_id" in json.dumps(schema)
