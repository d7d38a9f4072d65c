"""``dispatch mcp``: serve the MCP tools over stdio (the default) or streamable HTTP.

stdio is what a coding agent launches itself (stdout is the protocol, so every
human line goes to stderr).  ``--http HOST:PORT`` serves
``http://HOST:PORT/mcp``; on a loopback address it needs nothing more, on any
other address a bearer token is required, read from ``DISPATCH_MCP_TOKEN``
(never from the command line, where ``ps`` would show it).  The token is
checked by the SDK's own bearer middleware through a ``TokenVerifier``.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import sys
from typing import Any, Optional, Sequence

import click

from dispatch.config import Settings, redact_url
from dispatch.errors import DispatchError, UsageError

TOKEN_ENV = "DISPATCH_MCP_TOKEN"


def say(text: str) -> None:
    sys.stderr.write(f"[DispatchRunner] {text}\n")
    sys.stderr.flush()


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http {text}: expected HOST:PORT, like 127.0.0.1:8765")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StaticTokenVerifier:
    """The one token of ``DISPATCH_MCP_TOKEN``, compared in constant time."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode(), self.token.encode()):
            return AccessToken(token=token, client_id="dispatch-mcp", scopes=[])
        return None


def auth_options(host: str, port: int, token: Optional[str]) -> dict[str, Any]:
    if not token:
        if not is_loopback(host):
            raise UsageError(f"--http {host}:{port} is not a loopback address: set {TOKEN_ENV} to the bearer "
                             f"token clients must send (Authorization: Bearer ...)")
        return {}
    from mcp.server.auth.settings import AuthSettings

    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return {"auth": AuthSettings(issuer_url=url, resource_server_url=None),
            "token_verifier": StaticTokenVerifier(token)}


def serve(http: Optional[str], config: Optional[str]) -> None:
    settings = Settings.from_env()
    address = parse_address(http) if http else None
    options = auth_options(*address, os.environ.get(TOKEN_ENV) or None) if address else {}
    from dispatch.mcp_server.runs import RunService  # after the usage checks: they answer at once
    from dispatch.mcp_server.server import build_server

    service = RunService(settings, config)
    server = build_server(service, log_level="WARNING", **options)
    where = "embedded (in-process worker)" if settings.embedded else redact_url(settings.broker_url)
    if address is None:
        say(f"MCP server on stdio; runs go to {where}")
        server.run("stdio")
    else:
        host, port = address
        say(f"MCP server on http://{host}:{port}/mcp" + (" (bearer token required)" if options else "")
            + f"; runs go to {where}")
        server.run("streamable-http", host=host, port=port)
    service.wait_background()


@click.command(name="mcp", context_settings={"help_option_names": ["-h", "--help"]},
               help="Serve dispatch as MCP tools (validate, run, status, results, cancel, resume, schema) and "
                    "runs as resources dispatch://runs/{run_id}: over stdio by default, or streamable HTTP at "
                    f"http://HOST:PORT/mcp. A non-loopback HOST needs {TOKEN_ENV} (the bearer token).")
@click.option("--http", "http", metavar="HOST:PORT", help="serve streamable HTTP instead of stdio "
              "(e.g. 127.0.0.1:8765)")
@click.option("--config", metavar="FILE", help="config file for the runs (default: $DISPATCH_CONFIG); a run "
              "may name its own")
def mcp_command(http: Optional[str], config: Optional[str]) -> None:
    serve(http, config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``dispatch mcp [--http HOST:PORT] [--config FILE]``; the exit code (2: bad usage)."""
    try:
        mcp_command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="dispatch mcp",
                         standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return 130
    except DispatchError as exc:
        say(f"✗ {exc}")
        return exc.exit_code
    return 0
