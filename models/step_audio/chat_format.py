"""Step1's chat template: `<|BOT|>{role}\\n{content}<|EOT|>` per turn, ending in `<|BOT|>assistant\\n`.

Roles are `system`, `human` and `assistant`; `<|EOT|>` (id 3) doubles as end of sequence, `<|BOT|>` is id 4 and
one BOS (id 1) starts the sequence. The release has no tool-call format for Step-Audio-Chat that we know of: tool
results, should a history hold any, are shown to the model as a human turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.interfaces import Message

BOS_ID = 1
EOT_ID = 3
BOT_ID = 4
BOT = "<|BOT|>"
EOT = "<|EOT|>"

_ROLES = {"system": "system", "user": "human", "assistant": "assistant", "tool": "human"}


def turn(role: str, content: str) -> str:
    return f"{BOT}{role}\n{content}{EOT}"


def render(messages: Sequence[Message]) -> str:
    """The prompt text (without BOS) for a conversation, ready for the assistant's reply."""
    parts = []
    for m in messages:
        content = f"(tool result) {m.content}" if m.role == "tool" else m.content
        if m.role == "assistant" and not content.strip():
            continue  # a turn that was only a tool call: Step1 has nothing to show for it
        parts.append(turn(_ROLES[m.role], content))
    parts.append(f"{BOT}assistant\n")
    return "".join(parts)


def with_bos(ids: Sequence[int]) -> list[int]:
    """Exactly one BOS first, whatever the tokenizer added."""
    body = list(ids)
    while body and body[0] == BOS_ID:
        body.pop(0)
    return [BOS_ID, *body]
