"""What every phase shares and no phase owns: kinds registries, the one circuit breaker and the one
backoff for remote calls, the one HTTP/JSON client policy, the model providers, graph faults, text helpers.

Nothing here knows there are phases; it imports only ``models``/``errors``/``config``.
"""
from dispatch.common.backoff import backoff_delay, parse_retry_after
from dispatch.common.breaker import BREAKERS, BreakerBoard, CircuitBreaker, CircuitOpen
from dispatch.common.graph import GraphFault, find_cycles, graph_faults
from dispatch.common.http import HTTPCallError, post_json, read_key
from dispatch.common.providers import ChatReply, ProviderError, make_client
from dispatch.common.registry import Registry
from dispatch.common.text import (as_text, clip, extract_json, extract_json_value, one_line, text_table,
                                  truncate)

__all__ = [
    "BREAKERS", "BreakerBoard", "ChatReply", "CircuitBreaker", "CircuitOpen", "GraphFault", "HTTPCallError",
    "ProviderError", "Registry", "as_text", "backoff_delay", "clip", "extract_json", "extract_json_value",
    "find_cycles", "graph_faults", "make_client", "one_line", "parse_retry_after", "post_json", "read_key",
    "text_table", "truncate",
]
