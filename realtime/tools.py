"""Tools the LM may call: a registry of Python callables with JSON-schema parameters.

A tool runs on a side task with a timeout (the controller owns the deadline) while the session keeps sending
audio. Synchronous tools run in a worker thread. Two offline tools ship: the current time in a timezone and a
calculator. Register more with `ToolRegistry.register`.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.interfaces import ToolCall, ToolSpec

ToolFn = Callable[..., Any] | Callable[..., Awaitable[Any]]


class ToolError(Exception):
    """Raised by a tool for a failure the LM should hear about (bad argument, unknown timezone)."""


@dataclass(frozen=True)
class Tool:
    spec: ToolSpec
    fn: ToolFn
    # When the user's words make this tool plausible; None = always. Small LMs call tools on a whim (measured:
    # Qwen2.5-0.5B called one for 8 of 24 ordinary requests of the latency corpus, never needing it), and each
    # needless call costs a tool round-trip and an odd answer.
    relevant: Callable[[str], bool] | None = None


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, name: str, description: str, parameters: dict[str, Any], fn: ToolFn,
                 relevant: Callable[[str], bool] | None = None) -> None:
        self._tools[name] = Tool(ToolSpec(name, description, parameters), fn, relevant)

    def relevant_specs(self, user_text: str) -> list[ToolSpec]:
        """The tools offered to the LM for this user turn. Tools that do not fit are left out of the prompt
        altogether: described but forbidden (tool_choice "none"), a 0.5B model talks *about* them instead
        (measured: 14 of 24 corpus replies explained the `<tools>` tag to the user)."""
        return [t.spec for t in self._tools.values() if t.relevant is None or t.relevant(user_text)]

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    async def run(self, call: ToolCall) -> str:
        """The tool's result as text for the LM; errors come back as text too (the LM explains them)."""
        tool = self._tools.get(call.name)
        if tool is None:
            return json.dumps({"error": f"unknown tool {call.name!r}"})
        required = tool.spec.parameters.get("required", [])
        missing = [p for p in required if p not in call.arguments]
        if missing:
            return json.dumps({"error": f"missing argument(s): {', '.join(missing)}"})
        allowed = set(tool.spec.parameters.get("properties", {}))
        args = {k: v for k, v in call.arguments.items() if k in allowed}
        try:
            if inspect.iscoroutinefunction(tool.fn):
                result = await tool.fn(**args)
            else:
                result = await asyncio.to_thread(tool.fn, **args)
        except ToolError as exc:
            return json.dumps({"error": str(exc)})
        except Exception as exc:  # a tool's bug must not end the call
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return result if isinstance(result, str) else json.dumps(result)


def current_time(timezone: str = "UTC") -> dict[str, str]:
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown timezone {timezone!r}; use an IANA name such as Europe/Paris") from None
    now = datetime.now(zone)
    return {
        "timezone": timezone,
        "date": now.strftime("%A %d %B %Y"),
        "time": now.strftime("%H:%M"),
        "spoken": now.strftime("%-I:%M %p on %A, %B %-d"),
    }


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log, "exp": math.exp,
    "abs": abs, "round": round,
}
_CONSTS = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> dict[str, Any]:
    """Arithmetic on numbers only: parsed with `ast`, never `eval`, with bounds on exponents and size."""
    expr = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(expr) > 200:
        raise ToolError("expression too long")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise ToolError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ToolError(f"unsupported element in {expression!r}")

    try:
        value = ev(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    elif isinstance(value, float):
        value = round(value, 6)
    return {"expression": expression, "result": value}


_ASKS_TIME = re.compile(
    r"\b(what time|time is it|the time|current time|what day|which day|what date|the date|today's date|"
    r"day of the week|clock)\b", re.IGNORECASE)
_ASKS_ARITHMETIC = re.compile(
    r"(\d\s*[-+*/x×÷^%]\s*\d|\b(times|plus|minus|divided|multiplied|percent|squared|cubed|square root|"
    r"to the power|how much is|calculate|sum of|product of)\b)", re.IGNORECASE)


def asks_time(text: str) -> bool:
    return bool(_ASKS_TIME.search(text))


def asks_arithmetic(text: str) -> bool:
    return bool(_ASKS_ARITHMETIC.search(text))


def default_tools() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(
        "get_current_time",
        "Current local date and time in a timezone.",
        {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "IANA timezone, e.g. Asia/Tokyo"}},
            "required": ["timezone"],
        },
        current_time,
        relevant=asks_time,
    )
    registry.register(
        "calculate",
        "Evaluate an arithmetic expression, e.g. 17 * 23 or sqrt(2).",
        {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "the arithmetic expression"}},
            "required": ["expression"],
        },
        calculate,
        relevant=asks_arithmetic,
    )
    return registry
