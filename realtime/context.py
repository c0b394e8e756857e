"""Conversation history as text, under a token budget.

History holds user transcripts and the assistant's words *as heard* (truncated on barge-in), plus tool calls and
their results. The current user turn is not stored here until it is committed: `messages_for` appends it in the
stack's native form (transcript or audio codes) only for the prompt being built. That is what keeps speculative
drafts out of the history: a draft's prompt is built, the history is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from models.interfaces import Message, Role, ToolCall, UserInput


def rough_token_count(text: str) -> int:
    # A fallback when a stack has no tokenizer: ~4 characters per token for English.
    return max(1, len(text) // 4)


@dataclass
class ContextManager:
    instructions: str
    budget_tokens: int
    count_tokens: Callable[[str], int] = rough_token_count
    history: list[Message] = field(default_factory=list)
    # Per-turn audio/text token figures for stacks with audio tokens (the ratio the Step-Audio paper reports).
    audio_tokens: int = 0
    text_tokens_of_audio_turns: int = 0
    trimmed_messages: int = 0

    def messages_for(self, current: UserInput | None = None) -> list[Message]:
        """The prompt: system, trimmed history, then the current turn (not stored)."""
        current_msgs = [Message("user", current.content)] if current is not None else []
        fixed = self._tokens([Message("system", self.instructions), *current_msgs])
        kept: list[Message] = []
        used = fixed
        # Oldest-first trimming: walk back from the newest message until the budget is spent.
        for message in reversed(self.history):
            cost = self._tokens([message])
            if used + cost > self.budget_tokens:
                break
            kept.append(message)
            used += cost
        kept.reverse()
        # A tool result must not lead the history without the call that produced it.
        while kept and kept[0].role == "tool":
            kept.pop(0)
        return [Message("system", self.instructions), *kept, *current_msgs]

    def add_user(self, user: UserInput, item_id: str = "") -> None:
        self.history.append(Message("user", user.text, item_id=item_id))
        if user.audio_tokens:
            self.audio_tokens += user.audio_tokens
            self.text_tokens_of_audio_turns += self.count_tokens(user.text)
        self._trim()

    def add_assistant(self, text: str, tool_calls: tuple[ToolCall, ...] = (), item_id: str = "") -> int:
        """Append an assistant message; returns its index so it can be truncated later."""
        self.history.append(Message("assistant", text, tool_calls=tool_calls, item_id=item_id))
        self._trim()
        return len(self.history) - 1

    def add_note(self, role: Role, text: str, item_id: str = "") -> None:
        """A message a client inserted in another role (a system note mid-conversation)."""
        self.history.append(Message(role, text, item_id=item_id))
        self._trim()

    def add_tool_result(self, call: ToolCall, result: str) -> None:
        self.history.append(Message("tool", result, tool_call_id=call.id))
        self._trim()

    def delete(self, item_id: str) -> bool:
        """Remove the message of this conversation item (conversation.item.delete); False if it is not held."""
        for i, message in enumerate(self.history):
            if item_id and message.item_id == item_id:
                del self.history[i]
                return True
        return False

    def prompt_tokens(self, messages: list[Message]) -> int:
        return self._tokens(messages)

    def truncate_assistant(self, index: int, heard_text: str) -> None:
        """Barge-in: the assistant entry becomes what the user actually heard."""
        if 0 <= index < len(self.history) and self.history[index].role == "assistant":
            self.history[index] = replace(self.history[index], content=heard_text)

    def audio_to_text_ratio(self) -> float | None:
        if not self.audio_tokens or not self.text_tokens_of_audio_turns:
            return None
        return self.audio_tokens / self.text_tokens_of_audio_turns

    def _tokens(self, messages: list[Message]) -> int:
        # 4 tokens of chat-template framing per message, as ChatML-style templates add.
        return sum(self.count_tokens(m.content) + 4 for m in messages)

    def _trim(self) -> None:
        # Keep the stored history bounded too (the prompt is trimmed again per turn).
        limit = self.budget_tokens * 2
        while len(self.history) > 1 and self._tokens(self.history) > limit:
            self.history.pop(0)
            self.trimmed_messages += 1
