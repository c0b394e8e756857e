"""Server-sent events as OpenAI-style servers stream them: `data: {json}` lines, a blank line per event.

Kept apart from the HTTP client so the framing rules (comments, multi-line data, CRLF, the `[DONE]` sentinel)
are tested without a socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

DONE = "[DONE]"


class SSEDecoder:
    """Feed raw lines (bytes, with or without line endings); collect each event's `data` payload."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: bytes) -> str | None:
        """The payload of the event this line completes, else None."""
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            return self._flush()
        if text.startswith(":"):
            return None  # a comment: servers send them as keep-alives
        field, _, value = text.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def close(self) -> str | None:
        """A last event the server did not terminate with a blank line."""
        return self._flush()

    def _flush(self) -> str | None:
        if not self._data:
            return None
        payload = "\n".join(self._data)
        self._data = []
        return payload


def chunks(payloads: Iterator[str]) -> Iterator[dict[str, Any]]:
    """JSON chunks from payloads, stopping at `[DONE]` (used by tests; the client does the same inline)."""
    for payload in payloads:
        if payload.strip() == DONE:
            return
        yield json.loads(payload)
