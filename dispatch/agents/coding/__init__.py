"""Coding-agent CLIs as agent kinds: one preset module per CLI (see ``base.py`` for why).

Importing this package registers ``claude_code``, ``codex``, ``aider``,
``gemini``, ``opencode`` and ``mini_swe_agent`` in ``AGENTS``.
"""
from dispatch.agents.coding.base import CodingAgent, CodingOptions, CodingReport
from dispatch.agents.coding import aider, claude_code, codex, gemini, mini_swe_agent, opencode  # noqa: F401

__all__ = ["CodingAgent", "CodingOptions", "CodingReport"]
