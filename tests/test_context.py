"""History as text under a token budget."""

from __future__ import annotations

from models.interfaces import ToolCall, UserInput
from realtime.context import ContextManager


def turn(text: str, audio_tokens: int = 0) -> UserInput:
    return UserInput(text=text, content=f"<audio>{text}", key=text.lower(), audio_tokens=audio_tokens)


def test_current_turn_is_native_and_not_stored() -> None:
    ctx = ContextManager("system prompt", 1000)
    messages = ctx.messages_for(turn("hello"))
    assert [m.role for m in messages] == ["system", "user"] and messages[-1].content == "<audio>hello"
    assert ctx.history == []
    ctx.add_user(turn("hello"))
    assert ctx.history[0].content == "hello", "history keeps the transcript, not the native form"


def test_oldest_turns_are_trimmed_first_and_tool_results_keep_their_call() -> None:
    ctx = ContextManager("sys", budget_tokens=60)
    call = ToolCall("c1", "calculate", {"expression": "1+1"})
    ctx.add_user(turn("first question " * 5))
    ctx.add_assistant("", tool_calls=(call,))
    ctx.add_tool_result(call, "2")
    ctx.add_assistant("first answer " * 5)
    ctx.add_user(turn("second question"))
    ctx.add_assistant("second answer")
    messages = ctx.messages_for(turn("third"))
    contents = [m.content for m in messages]
    assert contents[0] == "sys" and contents[-1] == "<audio>third"
    assert "second answer" in contents and not any("first question" in c for c in contents)
    assert messages[1].role != "tool"


def test_truncation_and_audio_ratio() -> None:
    ctx = ContextManager("sys", 1000)
    ctx.add_user(turn("one two three four five six seven eight", audio_tokens=100))
    index = ctx.add_assistant("A long answer that was cut")
    ctx.truncate_assistant(index, "A long")
    assert ctx.history[index].content == "A long"
    ratio = ctx.audio_to_text_ratio()
    assert ratio is not None and ratio > 5
