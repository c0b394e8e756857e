"""Tool calls written as text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` or the bare JSON.

Qwen-style chat templates ask for this form, small models sometimes drop the tags, and OpenAI-compatible servers
without a tool parser stream it as plain content. Both LM backends read it with these functions.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from models.interfaces import ToolCall

log = logging.getLogger(__name__)

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def parse_arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.warning("tool call arguments are not JSON: %.200s", text)
        return {}
    if isinstance(value, str):  # double-encoded by some templates
        return parse_arguments(value)
    return value if isinstance(value, dict) else {}


def parse_text_call(text: str, known: set[str] | frozenset[str] = frozenset()) -> ToolCall | None:
    """A call in text form naming a known tool (any name when `known` is empty); None if it is not one."""
    body = text.strip()
    if body.startswith(TAG_OPEN):
        body = body[len(TAG_OPEN):]
        body = body.split(TAG_CLOSE, 1)[0]
    try:
        data = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    if known and data["name"] not in known:
        return None
    raw = data.get("arguments", data.get("parameters", {}))
    arguments = parse_arguments(raw) if isinstance(raw, str) else raw if isinstance(raw, dict) else {}
    return ToolCall(id=new_call_id(), name=data["name"], arguments=arguments)
