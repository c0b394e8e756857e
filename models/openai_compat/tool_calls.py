"""Tool calls from a streamed chat completion: OpenAI `delta.tool_calls` fragments, or a call written as text.

OpenAI streams a call as fragments keyed by `index`: the first carries `id` and `function.name`, later ones append
to `function.arguments` (a JSON string). llama.cpp's server repeats the name in every fragment, so a name equal to
the one already held is not appended again. Servers without a tool parser (llama.cpp's default Jinja path, vLLM
without --enable-auto-tool-choice) stream the call as content instead; `parse_text_call` reads that form.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from models.interfaces import ToolCall

log = logging.getLogger(__name__)

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"


@dataclass
class _Partial:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAccumulator:
    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, fragments: list[dict[str, Any]]) -> None:
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            call = self._calls.setdefault(int(index), _Partial())
            if fragment.get("id") and not call.id:
                call.id = str(fragment["id"])
            function = fragment.get("function") or {}
            name = function.get("name")
            if name and name != call.name:
                call.name += name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments.append(arguments)
            elif isinstance(arguments, dict):  # a few servers send the object itself
                call.arguments.append(json.dumps(arguments))

    def calls(self) -> list[ToolCall]:
        out = []
        for _, partial in sorted(self._calls.items()):
            if not partial.name:
                continue
            arguments = parse_arguments("".join(partial.arguments))
            out.append(ToolCall(id=partial.id or new_call_id(), name=partial.name, arguments=arguments))
        return out


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


def may_be_text_call(prefix: str) -> bool | None:
    """Whether content starting with `prefix` is a call written as text; None while it cannot tell yet."""
    head = prefix.lstrip()
    if not head:
        return None
    if head.startswith("{"):
        return True
    if TAG_OPEN.startswith(head[: len(TAG_OPEN)]):
        return True if len(head) >= len(TAG_OPEN) else None
    return False


def parse_text_call(text: str, known: set[str]) -> ToolCall | None:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` or the bare JSON, naming a known tool."""
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
