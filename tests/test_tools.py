"""The two shipped tools and the registry's handling of bad calls."""

from __future__ import annotations

import asyncio
import json

import pytest

from models.interfaces import ToolCall
from realtime.tools import ToolError, asks_arithmetic, asks_time, calculate, current_time, default_tools


def test_calculator_is_arithmetic_only() -> None:
    assert calculate("17 * 23")["result"] == 391
    assert calculate("2^10")["result"] == 1024
    assert calculate("sqrt(2)")["result"] == pytest.approx(1.414214)
    for bad in ("__import__('os')", "open('x')", "9**9**9", "1/0", "a + 1"):
        with pytest.raises(ToolError):
            calculate(bad)


def test_current_time_knows_timezones() -> None:
    tokyo = current_time("Asia/Tokyo")
    assert tokyo["timezone"] == "Asia/Tokyo" and ":" in tokyo["time"]
    with pytest.raises(ToolError, match="IANA"):
        current_time("Mars/Olympus")


def test_registry_reports_errors_to_the_lm_as_text() -> None:
    registry = default_tools()
    assert {s.name for s in registry.specs} == {"get_current_time", "calculate"}
    run = asyncio.run
    assert json.loads(run(registry.run(ToolCall("1", "calculate", {"expression": "1+1"}))))["result"] == 2
    assert "unknown tool" in run(registry.run(ToolCall("2", "rm_rf", {})))
    assert "missing argument" in run(registry.run(ToolCall("3", "calculate", {})))
    assert "division by zero" in run(registry.run(ToolCall("4", "calculate", {"expression": "1/0"})))


@pytest.mark.parametrize(
    ("text", "time", "arithmetic"),
    [
        ("What time is it in Tokyo right now?", True, False),
        ("What's today's date in London?", True, False),
        ("What is seventeen times twenty three?", False, True),
        ("How much is 15 percent of 80?", False, True),
        ("What is 12 * 7?", False, True),
        ("I keep waking up at three in the morning.", False, False),
        ("My basil plant looks kind of droopy.", False, False),
        ("I'm planning a trip to Lisbon in the spring.", False, False),
    ],
)
def test_tools_are_offered_only_when_the_request_fits(text: str, time: bool, arithmetic: bool) -> None:
    assert asks_time(text) is time and asks_arithmetic(text) is arithmetic
    offered = {spec.name for spec in default_tools().relevant_specs(text)}
    assert offered == {name for name, fits in (("get_current_time", time), ("calculate", arithmetic)) if fits}
