"""The ``rules`` validator: structure, agents, descriptions and prompt alignment, offline."""
from __future__ import annotations

import pytest

from dispatch.config import ComponentConfig, DispatchConfig
from dispatch.errors import ConfigError
from dispatch.models import DispatchInput, TaskSpec
from dispatch.quorum import VALIDATORS, build_validators, graph_faults, run_quorum
from dispatch.quorum.rules import RulesValidator
from dispatch.quorum.text import match, stem, term_roots


def task(task_id, description, agent="llm", deps=(), **extra):
    return TaskSpec(task_id=task_id, agent=agent, description=description, dependencies=list(deps), **extra)


def request(prompt, *tasks):
    return DispatchInput(user_prompt=prompt, tasks=list(tasks))


def rules(config=None, known_agents=None, **options):
    return RulesValidator("rules", ComponentConfig(kind="rules", **options), config or DispatchConfig(), known_agents)


POSTGRES_PROMPT = "build a postgres adapter"
AUTH_BREAKDOWN = [task("auth-model", "Create UserAuthentication model"),
                  task("login", "Implement login endpoint", deps=["auth-model"])]
ALIGNED_BREAKDOWN = [
    task("pool", "Implement the PostgreSQL connection pool for the adapter"),
    task("queries", "Implement adapter query and transaction methods on top of the pool", deps=["pool"]),
    task("tests", "Write integration tests for the postgres adapter", deps=["queries"]),
]


# ------------------------------------------------------- the guide's case
def test_postgres_adapter_broken_down_as_user_authentication_is_flagged():
    verdict = rules().validate(request(POSTGRES_PROMPT, *AUTH_BREAKDOWN))
    assert verdict.recommendation in ("RETRY", "FAIL")
    assert verdict.alignment_score < 25
    [mismatch] = [d for d in verdict.deficiencies if "does not match the request" in d]
    assert "postgres" in mismatch and "adapter" in mismatch
    assert "authentication" in mismatch  # says what the breakdown is about instead


def test_postgres_adapter_case_through_the_default_quorum():
    outcome = run_quorum(request(POSTGRES_PROMPT, *AUTH_BREAKDOWN), DispatchConfig(), sleep=lambda s: None)
    assert outcome.result.decision != "PASS"
    assert [v.validator for v in outcome.result.votes] == ["rules"]
    assert any("does not match the request" in d for d in outcome.result.deficiencies)


def test_well_aligned_breakdown_passes():
    verdict = rules().validate(request(POSTGRES_PROMPT + " with connection pooling", *ALIGNED_BREAKDOWN))
    assert verdict.recommendation == "PASS"
    assert verdict.alignment_score == 100.0
    assert verdict.deficiencies == []
    assert 0.5 <= verdict.confidence <= 0.9


def test_guide_example_input_passes():
    req = DispatchInput.model_validate({
        "user_prompt": "Generate two ONEX nodes: a database writer Effect node and a price calculator Compute node",
        "tasks": [
            {"task_id": "gen-db-writer", "agent": "llm", "description": "Generate database writer Effect node",
             "input_data": {"node_type": "Effect"}},
            {"task_id": "gen-calc", "agent": "llm", "description": "Generate price calculator Compute node",
             "input_data": {"node_type": "Compute"}, "dependencies": []},
        ]})
    assert rules().validate(req).recommendation == "PASS"


def test_partial_alignment_asks_for_a_retry():
    verdict = rules().validate(request(
        "build a postgres adapter with connection pooling, retries, metrics and structured logging",
        task("pool", "Implement postgres connection pool"),
        task("docs", "Document the deployment procedure for operators")))
    assert verdict.recommendation == "RETRY"
    assert any(d.startswith("Request terms not covered by any task:") and "metrics" in d
               for d in verdict.deficiencies)
    assert "Task 'docs' shares no key term with the request" in verdict.deficiencies


def test_without_a_prompt_only_structure_is_judged():
    verdict = rules().validate(request("", task("a", "Do the first thing properly"), task("b", "Then do another")))
    assert verdict.recommendation == "PASS"
    assert verdict.confidence == 0.5


# ------------------------------------------------------------- structure
def test_structural_faults_fail_with_every_fault_named():
    verdict = rules().validate(request(
        "write a postgres adapter",
        task("a", "Create postgres adapter skeleton", deps=["b"]),
        task("b", "Create postgres adapter queries", deps=["a"]),
        task("c", "Create postgres adapter tests", deps=["c", "zzz"]),
        task("a", "Duplicate postgres adapter task")))
    assert verdict.recommendation == "FAIL"
    assert verdict.confidence == 0.95
    text = "\n".join(verdict.deficiencies)
    assert "tasks[3].task_id: duplicate id 'a' (first at tasks[0])" in text
    assert "tasks[2].dependencies: task 'c' depends on itself" in text
    assert "tasks[2].dependencies: unknown task 'zzz'" in text
    assert "tasks: dependency cycle (a -> b: a depends on b): a -> b -> a" in text


def test_empty_breakdown_fails():
    verdict = rules().validate(DispatchInput(user_prompt="anything", tasks=[]))
    assert verdict.recommendation == "FAIL" and verdict.deficiencies == ["Breakdown has no tasks"]


def test_graph_faults_on_a_long_chain_and_a_clean_graph():
    chain = [task(f"t{i}", "step", deps=[f"t{i - 1}"] if i else []) for i in range(3000)]
    assert graph_faults(chain) == []
    chain[0] = task("t0", "step", deps=["t2999"])
    [fault] = graph_faults(chain)
    assert fault.startswith("tasks: dependency cycle (a -> b: a depends on b): t0 -> t2999 -> t2998") and fault.endswith("t1 -> t0")
    assert len(fault.split(" -> ")) == 3002  # the legend "(a -> b: ...)" and 3001 members


# ---------------------------------------------------------------- agents
def test_unknown_agent_asks_for_a_retry():
    verdict = rules(known_agents={"echo", "sleep"}).validate(
        request(POSTGRES_PROMPT, task("pool", "Implement postgres adapter pool", agent="wizard")))
    assert verdict.recommendation == "RETRY"
    assert any("unknown agent 'wizard'" in d for d in verdict.deficiencies)


def test_agents_from_config_hint_and_options_are_known():
    config = DispatchConfig.model_validate({"agents": {"coder": {"kind": "llm"}}})
    req = request(POSTGRES_PROMPT, task("pool", "Implement postgres adapter pool", agent="coder"))
    assert rules(config).validate(req).recommendation == "PASS"
    assert rules(known_agents={"coder"}).validate(req).recommendation == "PASS"
    assert rules(known_agents={"other"}).validate(req).recommendation == "RETRY"
    assert rules(agents=["coder"]).validate(req).recommendation == "PASS"
    assert rules(check_agents=False).validate(
        request(POSTGRES_PROMPT, task("p", "Implement postgres adapter pool", agent="x"))).recommendation == "PASS"
    for builtin in ("echo", "sleep", "shell", "python", "llm"):
        assert rules().validate(request(POSTGRES_PROMPT, task("p", "Implement postgres adapter pool",
                                                              agent=builtin))).recommendation == "PASS"


# ----------------------------------------------------------- descriptions
def test_empty_and_short_descriptions():
    verdict = rules().validate(request(POSTGRES_PROMPT, task("pool", "Implement postgres adapter pool"),
                                       task("empty", "   "), task("short", "adapter")))
    assert "Task 'empty' has an empty description" in verdict.deficiencies
    assert "Task 'short' description is very short: 'adapter'" in verdict.deficiencies
    assert verdict.recommendation == "RETRY"


# ------------------------------------------------------------------ config
def test_registry_and_default_quorum():
    assert {"rules", "openai", "anthropic"} <= set(VALIDATORS.kinds())
    [only] = build_validators(DispatchConfig())
    assert only.kind == "rules" and only.name == "rules" and only.deterministic


@pytest.mark.parametrize("options,message", [
    ({"pass_score": 120}, "pass_score"), ({"fail_score": 80, "pass_score": 50}, "fail_score must not exceed"),
    ({"agents": "coder"}, "agents"),
])
def test_bad_rules_options(options, message):
    config = DispatchConfig.model_validate({"validators": {"mine": {"kind": "rules", **options}}})
    with pytest.raises(ConfigError, match=message):
        build_validators(config)


def test_unknown_validator_kind_names_the_entry():
    config = DispatchConfig.model_validate({"validators": {"oracle": {"kind": "crystal-ball"}}})
    with pytest.raises(ConfigError, match=r"validators\.oracle: unknown validator kind 'crystal-ball'"):
        build_validators(config)


def test_all_zero_weights_refused():
    config = DispatchConfig.model_validate({"validators": {"r": {"kind": "rules", "weight": 0}}})
    with pytest.raises(ConfigError, match="positive weight"):
        build_validators(config)


# -------------------------------------------------------------------- text
def test_term_roots_split_names_and_drop_generic_words():
    assert list(term_roots("Create UserAuthentication model")) == ["user", "authentic", "model"]
    assert list(term_roots("build a postgres adapter")) == ["postgre", "adapt"]
    assert "postgre" in term_roots("PostgreSQL")
    assert term_roots("the and of to build implement") == {}


@pytest.mark.parametrize("a,b", [("nodes", "node"), ("adapters", "adapter"), ("indexes", "index"),
                                 ("services", "service"), ("caching", "cache"), ("pooling", "pool")])
def test_stems_meet(a, b):
    assert match(stem(a), stem(b))


def test_prefix_match_needs_four_letters():
    assert match("auth", "authentic") and match("postgre", "postgresql")
    assert not match("us", "user") and not match("api", "apiary")
    assert stem("class") == "class" and stem("status") == "status"


def test_overlapping_declared_writes_are_a_deficiency():
    from dispatch.models import TaskSpec

    tasks = [TaskSpec(task_id="a", agent="echo", description="Implement the postgres pool", writes=["src/db/**"]),
             TaskSpec(task_id="b", agent="echo", description="Implement the postgres adapter", writes=["src/db/x.py"])]
    verdict = rules().validate(DispatchInput(user_prompt=POSTGRES_PROMPT, tasks=tasks))
    assert any("tasks 'a' and 'b' may both write" in d for d in verdict.deficiencies), verdict.deficiencies
