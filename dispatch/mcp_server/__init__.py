"""The MCP server: dispatch's runs as tools for coding agents (``dispatch mcp``)."""
from dispatch.mcp_server.command import main, mcp_command

__all__ = ["main", "mcp_command"]
