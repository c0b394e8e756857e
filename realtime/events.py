"""The event protocol spoken on the `events` data channel (and the telephony bridges' logs).

Names follow the OpenAI Realtime API where one fits; Parley's own additions (speculation, tools) use the same
dotted style. Every server event is a JSON object with `type` and `event_id`. README.md lists them all with
their fields; `SERVER_EVENTS` and `CLIENT_EVENTS` are the authoritative lists the tests check against.
"""

from __future__ import annotations

import itertools
from typing import Any

SERVER_EVENTS = (
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.dtmf",  # a phone key press (SIP RFC 4733 or Twilio `dtmf`): digit, duration_ms, transport
    "input_audio_buffer.committed",  # a user turn entered the conversation (its transcript follows)
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "speculation.started",
    "speculation.discarded",
    "speculation.committed",
    "turn.scored",  # semantic turn detection: how finished the pause sounds, and the silence it now needs
    "turn.resumed",  # a false end of turn: the reply was dropped, the caller's turn goes on as one item
    "conversation.item.deleted",  # an item left the conversation (the parts of a resumed turn)
    "generation.stopped",  # a cancelled draft or reply's work has actually stopped: cancel_latency_ms
    "response.created",
    "response.audio_transcript.delta",
    "response.function_call.started",
    "response.function_call.completed",
    "response.function_call.requested",  # the LM called a tool the client runs (OpenAI Realtime `tools`)
    "response.done",
    "conversation.item.truncate",
    "session.summary",
    "warning",
    "error",
)

CLIENT_EVENTS = ("session.update", "response.cancel", "conversation.item.truncate", "ping")

_ids = itertools.count(1)


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event; unknown names are a programming error, caught here rather than by a client."""
    if type_ not in SERVER_EVENTS:
        raise ValueError(f"not a server event: {type_}")
    return {"type": type_, "event_id": f"evt_{next(_ids)}", **fields}


def error(kind: str, message: str, **fields: Any) -> dict[str, Any]:
    """`kind` is one of: invalid_request_error, invalid_event, unsupported, server_error, capacity."""
    return event("error", error={"type": kind, "message": message, **fields})
