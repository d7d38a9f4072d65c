"""``dispatch mcp`` through the official SDK's own client: over stdio (embedded) and over streamable HTTP
(Redis, two real workers), compared with what the CLI gives for the same breakdown."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import PYTHON, base_env, free_port, run_cli
from dispatch.config import Settings
from dispatch.mcp_server import main as mcp_main
from dispatch.store import make_store

TOOLS = {"validate", "run", "status", "results", "cancel", "resume", "schema"}
DIAMOND = {"user_prompt": "a diamond", "tasks": [
    {"task_id": "root", "agent": "echo", "description": "the first step of the diamond"},
    {"task_id": "left", "agent": "echo", "description": "the left branch", "dependencies": ["root"]},
    {"task_id": "right", "agent": "echo", "description": "the right branch", "dependencies": ["root"]},
    {"task_id": "join", "agent": "echo", "description": "joins both branches", "dependencies": ["left", "right"]},
]}
BAD = {"tasks": [{"task_id": "a", "agent": "echo", "description": "first"},
                 {"task_id": "b", "agent": "echo", "description": "second", "dependencies": ["x"]}]}


def tool_json(result: Any) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def per_task(results: list[dict]) -> dict[str, tuple]:
    """What must match between the CLI and MCP: each task's outcome and output."""
    return {r["task_id"]: (r["success"], r["agent"], json.dumps(r["output"], sort_keys=True)) for r in results}


def stored(env: dict[str, str], run_id: str) -> Any:
    """The run as the CLI's store holds it (``dispatch show`` reads the same)."""
    return make_store(Settings.from_env(env)).load(run_id)


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    return await client.call_tool(tool, arguments)


async def wait_until_finished(client: Client, run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = tool_json(await call(client, "status", run_id=run_id))
        if status["status"] not in ("pending", "running"):
            return status
        await anyio.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {status}")


# ----------------------------------------------------------------- fast, no server
def test_http_on_a_public_address_needs_a_token_and_bad_addresses_are_usage_errors(capsys, monkeypatch):
    monkeypatch.delenv("DISPATCH_MCP_TOKEN", raising=False)
    assert mcp_main(["--http", "0.0.0.0:8765"]) == 2
    assert "not a loopback address: set DISPATCH_MCP_TOKEN" in capsys.readouterr().err
    assert mcp_main(["--http", "nonsense"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert mcp_main(["--bogus"]) == 2
    assert "No such option" in capsys.readouterr().err
    assert mcp_main(["--help"]) == 0
    assert "dispatch://runs/{run_id}" in capsys.readouterr().out


# ----------------------------------------------------------------- stdio, embedded
def stdio_server(env: dict[str, str], cwd: Path) -> StdioServerParameters:
    return StdioServerParameters(command=PYTHON, args=["-m", "dispatch.mcp_server"], env=env, cwd=str(cwd))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stdio_embedded_lists_tools_refuses_a_bad_breakdown_and_runs_like_the_cli(tmp_path, cli):
    env = base_env(tmp_path)
    progress: list[tuple[float, Optional[float], Optional[str]]] = []

    async def on_progress(value: float, total: Optional[float], message: Optional[str]) -> None:
        progress.append((value, total, message))

    async def session() -> dict:
        async with Client(stdio_server(env, tmp_path)) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(listed) >= TOOLS
            breakdown_schema = listed["run"].input_schema
            assert breakdown_schema["required"] == ["breakdown"]
            breakdown = breakdown_schema["properties"]["breakdown"]
            assert breakdown["title"] == "DispatchInput" and breakdown["required"] == ["tasks"]
            assert {"task_id", "agent", "description"} <= set(breakdown_schema["$defs"]["TaskSpec"]["properties"])
            assert "DispatchOutput" in json.dumps(listed["results"].output_schema)

            bad = await call(client, "validate", breakdown=BAD)
            assert bad.is_error
            unknown_agent = await call(client, "run", breakdown={"tasks": [
                {"task_id": "a", "agent": "nobody", "description": "d"}]})
            missing = await call(client, "run", breakdown={"tasks": [{"task_id": "a"}]})
            bad_config = await call(client, "run", breakdown=DIAMOND, config={"agents": {"x": {"nokind": 1}}})
            secret = await call(client, "run", breakdown=DIAMOND,
                                config={"agents": {"x": {"kind": "shell", "api_key": "sk-123"}}})
            assert all(r.is_error for r in (unknown_agent, missing, bad_config, secret))

            checked = tool_json(await call(client, "validate", breakdown=DIAMOND))  # the server is still up
            schema = tool_json(await call(client, "schema"))
            waited = tool_json(await client.call_tool("run", {"breakdown": DIAMOND, "wait": True},
                                                      progress_callback=on_progress))
            submitted = tool_json(await call(client, "run", breakdown=DIAMOND))
            finished = await wait_until_finished(client, submitted["run_id"])
            later = tool_json(await call(client, "results", run_id=submitted["run_id"]))
            resource = await client.read_resource(f"dispatch://runs/{submitted['run_id']}")
            missing_run = await call(client, "status", run_id="20990101-000000-00000000")
            return {"bad": bad.content[0].text, "unknown_agent": unknown_agent.content[0].text,
                    "missing": missing.content[0].text, "bad_config": bad_config.content[0].text,
                    "secret": secret.content[0].text, "checked": checked, "schema": schema, "waited": waited,
                    "submitted": submitted, "finished": finished, "later": later,
                    "resource": json.loads(resource.contents[0].text), "missing_run": missing_run}

    got = anyio.run(session)
    # exit-2 faults are tool errors with the CLI's own message (the CLI names its source "stdin")
    refused = cli(stdin=json.dumps(BAD))
    assert refused.returncode == 2
    assert got["bad"] == "breakdown: tasks[1].dependencies: unknown task 'x'"
    assert got["bad"].removeprefix("breakdown: ") in refused.stderr
    assert "unknown agent 'nobody'" in got["unknown_agent"] and "echo" in got["unknown_agent"]
    assert got["missing"] == "breakdown: tasks[0].agent: Field required; tasks[0].description: Field required"
    assert got["bad_config"].startswith("config: agents.x.kind: Field required")
    assert "secrets are read from the environment" in got["secret"] and "sk-123" not in got["secret"]
    assert got["missing_run"].is_error and "no run '20990101-000000-00000000'" in got["missing_run"].content[0].text

    checked = got["checked"]
    assert checked["valid"] and checked["decision"] in ("PASS", "RETRY") and checked["status"] == "succeeded"
    assert checked["plan"]["levels"] == [["root"], ["left", "right"], ["join"]]
    assert checked["plan"]["critical_path"][0] == "root" and checked["plan"]["critical_path"][-1] == "join"
    assert got["schema"] == cli("schema").json

    # the same breakdown through the CLI: the same tasks, outcomes and outputs
    expected = cli(stdin=json.dumps(DIAMOND))
    assert expected.returncode == 0, expected.stderr
    waited = got["waited"]["results"]
    assert waited["success"] and waited["finished"] and got["waited"]["status"] == "succeeded"
    assert per_task(waited["output"]["results"]) == per_task(expected.json["results"])
    assert [t["status"] for t in waited["tasks"]] == ["succeeded"] * 4
    assert waited["output"]["timing_summary"]["phases"] == [
        {**p, "duration_ms": q["duration_ms"]} for p, q in zip(expected.json["timing_summary"]["phases"],
                                                                waited["output"]["timing_summary"]["phases"])]
    values = [value for value, _, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values) and values[-1] == 3.0
    assert any("phase 4 Parallel Execution" in (message or "") for _, _, message in progress)

    assert got["submitted"]["status"] == "pending" and got["submitted"]["mode"] == "embedded"
    assert got["finished"]["status"] == "succeeded" and got["finished"]["tasks_finished"] == 4
    assert per_task(got["later"]["output"]["results"]) == per_task(expected.json["results"])
    assert got["resource"]["status"]["run_id"] == got["submitted"]["run_id"]
    assert got["resource"]["results"]["success"]
    # the run is in the same store the CLI reads
    assert stored(env, got["submitted"]["run_id"]).status == "succeeded"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stdio_embedded_cancel_a_long_run_then_resume_it_with_another_config(tmp_path):
    env = base_env(tmp_path)
    slow = {"agents": {"step": {"kind": "shell", "command": ["sleep", "8"]}}}
    fast = {"agents": {"step": {"kind": "shell", "command": ["true"]}}}
    breakdown = {"tasks": [{"task_id": f"s{i}", "agent": "step", "description": f"step {i}",
                            "dependencies": [f"s{i - 1}"] if i else []} for i in range(3)]}

    async def session() -> dict:
        async with Client(stdio_server(env, tmp_path)) as client:
            run_id = tool_json(await call(client, "run", breakdown=breakdown, config=slow))["run_id"]
            deadline = time.monotonic() + 30
            while tool_json(await call(client, "status", run_id=run_id))["status"] != "running":
                assert time.monotonic() < deadline, "the run never started"
                await anyio.sleep(0.1)
            await anyio.sleep(1.0)
            t0 = time.monotonic()
            cancelled = tool_json(await call(client, "cancel", run_id=run_id))
            status = tool_json(await call(client, "status", run_id=run_id))
            elapsed = time.monotonic() - t0
            results = tool_json(await call(client, "results", run_id=run_id))
            busy = await call(client, "resume", run_id=run_id, wait=True, config=fast)
            for _ in range(600):  # the embedded worker finishes its running sleep before the next run
                if not busy.is_error:
                    break
                await anyio.sleep(0.1)
                busy = await call(client, "resume", run_id=run_id, wait=True, config=fast)
            return {"cancelled": cancelled, "status": status, "elapsed": elapsed, "results": results,
                    "resumed": tool_json(busy)}

    got = anyio.run(session)
    assert got["cancelled"]["previous_status"] == "running" and got["cancelled"]["status"] == "cancelled"
    assert got["status"]["status"] == "cancelled" and got["elapsed"] < 5
    assert got["results"]["finished"] and not got["results"]["success"]
    resumed = got["resumed"]
    assert resumed["run_id"] == got["cancelled"]["run_id"] and resumed["status"] == "succeeded"
    assert [t["task_id"] for t in resumed["results"]["tasks"]] == ["s0", "s1", "s2"]
    assert all(t["success"] for t in resumed["results"]["tasks"])


# ----------------------------------------------------------------- HTTP, Redis, two workers
def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the MCP server exited:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the MCP server did not listen on {port}:\n{log.read_text()}")


@asynccontextmanager
async def http_client(url: str, token: str) -> AsyncIterator[Client]:
    import httpx2

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_http_on_redis_with_two_workers_runs_reads_and_cancels(distributed, tmp_path):
    env = distributed["env"]
    workers = distributed["workers"]
    workers.start("w1", pool="prefork", concurrency=2)  # prefork: cancel terminates running tasks
    workers.start("w2", pool="prefork", concurrency=2)
    token = os.urandom(16).hex()
    port = free_port()
    log = tmp_path / "mcp.log"
    server = subprocess.Popen([PYTHON, "-m", "dispatch.mcp_server", "--http", f"127.0.0.1:{port}"],
                              env={**env, "DISPATCH_MCP_TOKEN": token}, cwd=tmp_path,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"
    wide = {"tasks": [{"task_id": "first", "agent": "sleep", "description": "start", "input_data": {"seconds": 0.2}},
                      *({"task_id": f"p{i}", "agent": "sleep", "description": f"part {i}",
                         "input_data": {"seconds": 0.4}, "dependencies": ["first"]} for i in range(6)),
                      {"task_id": "last", "agent": "echo", "description": "gather",
                       "dependencies": [f"p{i}" for i in range(6)]}]}
    long = {"tasks": [{"task_id": f"long{i}", "agent": "sleep", "description": "a long wait",
                       "input_data": {"seconds": 60}} for i in range(3)]}
    try:
        wait_for_port(port, server, log)
        refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401
        wrong = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers={"Authorization": "Bearer wrong", "Accept": "application/json, text/event-stream"})
        assert wrong.status_code == 401

        async def session() -> dict:
            async with http_client(url, token) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                bad = await call(client, "validate", breakdown=BAD)
                submitted = tool_json(await call(client, "run", breakdown=wide))
                finished = await wait_until_finished(client, submitted["run_id"])
                results = tool_json(await call(client, "results", run_id=submitted["run_id"]))
                waited = tool_json(await call(client, "run", breakdown=DIAMOND, wait=True))
                slow = tool_json(await call(client, "run", breakdown=long))
                deadline = time.monotonic() + 30
                while tool_json(await call(client, "status", run_id=slow["run_id"]))["status"] != "running":
                    assert time.monotonic() < deadline, "the long run never started"
                    await anyio.sleep(0.2)
                await anyio.sleep(1.0)
                cancelled = tool_json(await call(client, "cancel", run_id=slow["run_id"]))
                after = tool_json(await call(client, "status", run_id=slow["run_id"]))
                again = await call(client, "cancel", run_id=submitted["run_id"])
                return {"names": names, "bad": bad, "submitted": submitted, "finished": finished,
                        "results": results, "waited": waited, "cancelled": cancelled, "after": after,
                        "again": again}

        got = anyio.run(session)
    finally:
        server.terminate()
        server.wait(15)
    assert got["names"] >= TOOLS
    assert got["bad"].is_error and got["bad"].content[0].text == "breakdown: tasks[1].dependencies: unknown task 'x'"
    assert got["submitted"]["mode"] == "distributed" and got["finished"]["status"] == "succeeded"
    assert got["finished"]["tasks_finished"] == 8 and got["finished"]["tasks_succeeded"] == 8
    tasks = got["results"]["tasks"]
    assert sorted(t["task_id"] for t in tasks) == sorted(t["task_id"] for t in wide["tasks"])
    assert all(t["status"] == "succeeded" for t in tasks)
    assert {t["worker"].split("@")[0] for t in tasks} == {"w1", "w2"}  # spread over both workers

    expected = run_cli([], stdin=json.dumps(DIAMOND), env=env)  # the CLI on the same cluster
    assert expected.returncode == 0, expected.stderr
    assert per_task(got["waited"]["results"]["output"]["results"]) == per_task(expected.json["results"])
    again = run_cli([], stdin=json.dumps(wide), env=env)
    assert per_task(got["results"]["output"]["results"]) == per_task(again.json["results"])

    assert got["cancelled"]["status"] == "cancelled" and got["cancelled"]["revoked"] >= 3
    assert got["after"]["status"] == "cancelled"
    assert got["again"].is_error and "already succeeded: nothing to cancel" in got["again"].content[0].text
    assert stored(env, got["cancelled"]["run_id"]).status == "cancelled"
    assert "Traceback" not in log.read_text()
