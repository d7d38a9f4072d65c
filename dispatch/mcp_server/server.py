"""dispatch as MCP tools and resources, on the official SDK's ``MCPServer``.

An orchestrating agent hands its breakdown to ``validate`` (phases 1-2), then
``run``, and reads ``status`` / ``results`` back; ``cancel`` and ``resume`` are
the CLI's.  Arguments are typed with the project's models, so ``tools/list``
shows the breakdown's JSON Schema (``DispatchInput``) and each answer's
(``dispatch.mcp_server.shapes``).  The breakdown is checked by dispatch itself
(``SkipValidation``: the SDK passes the raw object on), so a bad one is an
``isError`` result carrying exactly the CLI's message, naming the path of the
fault, and the server stays up.
"""
from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Callable, Optional, Union

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, SkipValidation

from dispatch.config import DispatchConfig
from dispatch.errors import DispatchError
from dispatch.mcp_server.runs import RunService
from dispatch.mcp_server.shapes import CancelReport, RunReply, RunResults, RunStatusReport, ValidationReport
from dispatch.models import DispatchInput
from dispatch.runtime.connection import connection_errors

INSTRUCTIONS = (
    "dispatch runs a breakdown of work (JSON tasks with dependencies) as parallel agent tasks on Celery "
    "workers. Call validate(breakdown) first: the quorum's verdict, its deficiencies and the plan, without "
    "running agents. Then run(breakdown) returns a run id at once (or, with wait=true, the results); poll "
    "status(run_id) and read results(run_id). A run is also the resource dispatch://runs/{run_id}. "
    "schema() is the breakdown's JSON Schema.")

Breakdown = Annotated[SkipValidation[DispatchInput], Field(
    description="the task breakdown, the same JSON object the CLI reads (see the schema tool)")]
ConfigArg = Annotated[Optional[SkipValidation[Union[str, DispatchConfig]]], Field(
    description="a config file path on the server (as --config), or the config itself (agents, validators, "
                "retrievers); default: the server's config")]
RunId = Annotated[str, Field(description="a run id, as run returned it", min_length=1)]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)


def error_result(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def answer(call: Callable[[], BaseModel]) -> CallToolResult:
    """Run a tool body: its model as structured content, or the CLI's message as a tool error."""
    try:
        value = call()
    except DispatchError as exc:
        return error_result(str(exc))
    except Exception as exc:
        if not isinstance(exc, connection_errors()):
            raise
        return error_result(f"cannot reach the broker or Redis ({type(exc).__name__}: {exc})")
    data = value.model_dump(mode="json")
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, indent=2))],
                          structured_content=data)


def progress_reporter(ctx: Context) -> Callable[[float, float, str], None]:
    """Progress from the run's thread, sent as MCP progress notifications on the request's loop."""
    def report(progress: float, total: float, message: str) -> None:
        anyio.from_thread.run(functools.partial(ctx.report_progress, progress, total, message))
    return report


def build_server(service: RunService, **server_options: Any) -> MCPServer:
    server = MCPServer("dispatch", instructions=INSTRUCTIONS, **server_options)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False))
    def validate(breakdown: Breakdown, config: ConfigArg = None) -> Annotated[CallToolResult, ValidationReport]:
        """Phases 1-2 only: the quorum's decision and deficiencies and the plan (order, levels, critical path),
        without running any agent, so a breakdown can be fixed before anything is spent."""
        return answer(lambda: service.validate(breakdown, config))

    @server.tool()
    async def run(breakdown: Breakdown, ctx: Context, wait: bool = False,
                  config: ConfigArg = None) -> Annotated[CallToolResult, RunReply]:
        """Submit a breakdown (phases 2-4). Returns the run id at once; with wait=true runs it to the end,
        sending progress notifications, and returns the results too."""
        report = progress_reporter(ctx) if wait else None
        return await anyio.to_thread.run_sync(
            lambda: answer(lambda: service.run(breakdown, wait=wait, config=config, progress=report)))

    @server.tool(annotations=READ_ONLY)
    def status(run_id: RunId) -> Annotated[CallToolResult, RunStatusReport]:
        """Where a run is: its status, each phase so far, and how many agent tasks have finished."""
        return answer(lambda: service.status(run_id))

    @server.tool(annotations=READ_ONLY)
    def results(run_id: RunId) -> Annotated[CallToolResult, RunResults]:
        """A run's results: per task its status, output, changes and usage, plus the CLI's JSON document."""
        return answer(lambda: service.results(run_id))

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    def cancel(run_id: RunId) -> Annotated[CallToolResult, CancelReport]:
        """Cancel a run: queued tasks dropped, agent tasks not started fail as cancelled, run marked cancelled."""
        return answer(lambda: service.cancel(run_id))

    @server.tool()
    async def resume(run_id: RunId, ctx: Context, wait: bool = False, config: ConfigArg = None,
                     force: bool = False) -> Annotated[CallToolResult, RunReply]:
        """Continue a stopped run under the same id: the phases after its last completed one run again, tasks
        that succeeded keep their results. force=true resumes a run still marked running."""
        report = progress_reporter(ctx) if wait else None
        return await anyio.to_thread.run_sync(
            lambda: answer(lambda: service.resume(run_id, wait=wait, config=config, force=force,
                                                  progress=report)))

    @server.tool(annotations=READ_ONLY)
    def schema() -> dict[str, Any]:
        """The JSON Schema of a breakdown (the same as 'dispatch schema')."""
        return service.schema()

    @server.resource("dispatch://runs", name="runs", mime_type="application/json",
                     description="recent runs with their status (as 'dispatch runs')")
    def recent_runs() -> str:
        return resource_json(lambda: service.runs())

    @server.resource("dispatch://runs/{run_id}", name="run", mime_type="application/json",
                     description="one run: its status and its results so far")
    def run_resource(run_id: str) -> str:
        return resource_json(lambda: RunResource(status=service.status(run_id), results=service.results(run_id)))

    return server


class RunResource(BaseModel):
    status: RunStatusReport
    results: RunResults


def resource_json(call: Callable[[], BaseModel]) -> str:
    try:
        return call().model_dump_json(indent=2)
    except DispatchError as exc:
        raise ResourceError(str(exc)) from None
    except Exception as exc:
        if not isinstance(exc, connection_errors()):
            raise
        raise ResourceError(f"cannot reach the broker or Redis ({type(exc).__name__}: {exc})") from None
