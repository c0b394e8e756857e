"""One connection's translation between OpenAI Realtime (GA) events and a Parley session.

    GA client event ──incoming()──▶ Session methods (update, commit_input, add_text, create_response, ...)
    session event   ──outgoing()──▶ GA server events (an item's added/done, a response's parts, ...)

The session speaks Parley's own events (realtime/events.py); GA clients expect more of them, in a fixed order
(a response is created, its output item added, its content part added, deltas, then each part done, then the
response done), so one Parley event often becomes several GA events. Parley's additions (speculation, server-run
tools, warnings) are sent only to a client that asked for them (`parley_extensions=1` on the URL), as
`parley.*` events, so a strict client never sees a type it cannot parse.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from realtime.audio import to_int16
from realtime.config import ConfigError
from realtime.openai_realtime.session_config import SessionUpdateError, WireSettings, parse_update, render
from realtime.transports import g711

if TYPE_CHECKING:
    from realtime.session import Session

Send = Callable[[dict[str, Any]], None]
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this; so does Parley
EXTENSION_EVENTS = {
    "speculation.started": "parley.speculation.started",
    "speculation.discarded": "parley.speculation.discarded",
    "speculation.committed": "parley.speculation.committed",
    "response.function_call.started": "parley.function_call.started",
    "response.function_call.completed": "parley.function_call.completed",
    "input_audio_buffer.dtmf": "parley.dtmf",
    "warning": "parley.warning",
    "session.summary": "parley.session.summary",
    "turn.scored": "parley.turn.scored",
    "turn.resumed": "parley.turn.resumed",
    "generation.stopped": "parley.generation.stopped",
}
# Parley's reasons for a response's end → GA's (a reply dropped because the caller went on is GA's barge-in).
STATUS_REASONS = {"turn_detected": "turn_detected", "client_cancelled": "client_cancelled",
                  "max_output_tokens": "max_output_tokens", "content_filter": "content_filter",
                  "turn_resumed": "turn_detected"}


class ClientError(Exception):
    """A client event Parley refuses: answered with a GA `error` event; the connection stays open."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.kind = kind


@dataclass
class _Response:
    id: str
    item_id: str
    text_only: bool
    transcript: str = ""
    function_item: dict[str, Any] | None = None


class RealtimeProtocol:
    def __init__(self, send: Send, *, audio_in_events: bool, extensions: bool,
                 wire: WireSettings | None = None) -> None:
        self._send = send
        self.audio_in_events = audio_in_events  # WebSocket: audio rides in events; WebRTC: on the media track
        self.extensions = extensions
        self.wire = wire or WireSettings()
        self.session: Session | None = None
        self.items: dict[str, dict[str, Any]] = {}  # the conversation as GA items, for retrieve and delete
        self._last_item: str | None = None
        self._responses: dict[str, _Response] = {}
        self.speaking: _Response | None = None  # the response whose audio is going out now
        self._ids = 0
        self._on_wire_change: Callable[[WireSettings], None] = lambda wire: None
        self._push_audio: Callable[[bytes], None] = lambda payload: None

    def attach(self, session: Session, push_audio: Callable[[bytes], None] | None = None,
               on_wire_change: Callable[[WireSettings], None] | None = None) -> None:
        self.session = session
        if push_audio is not None:
            self._push_audio = push_audio
        if on_wire_change is not None:
            self._on_wire_change = on_wire_change
        session.set_client_tools(list(self.wire.tools))
        session.tool_choice = self.wire.tool_choice

    # --- GA client events ------------------------------------------------------------------------------------

    def incoming(self, raw: str | bytes) -> None:
        event_id: str | None = None
        try:
            try:
                message = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ClientError(f"the event is not valid JSON: {exc}", "invalid_json") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ClientError("an event must be a JSON object with a string 'type'", "invalid_event")
            event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
            handler = self._handlers().get(message["type"])
            if handler is None:
                raise ClientError(f"unknown or unsupported client event type {message['type'][:60]!r}",
                                  "unknown_event_type", "type")
            handler(message)
        except ClientError as exc:
            self._error(exc, event_id)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        return {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": lambda message: self._session().cancel_response(True, _event_id(message)),
            "output_audio_buffer.clear": self._output_clear,
        }

    def _session(self) -> Session:
        if self.session is None:
            raise ClientError("the session is not ready yet", "session_not_ready", kind="server_error")
        return self.session

    def _session_update(self, message: dict[str, Any]) -> None:
        session = self._session()
        try:
            overrides, wire = parse_update(message.get("session"), self.wire, session.settings)
        except SessionUpdateError as exc:
            raise ClientError(str(exc), exc.code, exc.param) from None
        try:
            session.apply_settings(overrides)
        except ConfigError as exc:
            raise ClientError(str(exc), "invalid_value", "session") from None
        self.wire = wire
        session.set_client_tools(list(wire.tools))
        session.tool_choice = wire.tool_choice
        self._on_wire_change(wire)
        self._emit("session.updated", session=render(session.id, wire, session.settings, self.extensions))

    def _append(self, message: dict[str, Any]) -> None:
        if not self.audio_in_events:
            raise ClientError("on a WebRTC call the audio travels on the media track, not in events",
                              "unsupported", "type")
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ClientError("input_audio_buffer.append needs 'audio': base64 of the input format", param="audio")
        try:
            payload = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError("'audio' is not valid base64", param="audio") from None
        if self.wire.input_format == "audio/pcm" and len(payload) % 2:
            raise ClientError("audio/pcm is 16-bit samples: the decoded audio has an odd number of bytes",
                              param="audio")
        self._session()
        if payload:
            self._push_audio(payload)

    def _commit(self, message: dict[str, Any]) -> None:
        session = self._session()
        if not session.settings.manual_turns:
            raise ClientError("input_audio_buffer.commit needs turn_detection null (manual turns); with server_vad "
                              "or semantic_vad the server commits at each end of turn", "unsupported")
        if session.uncommitted_ms < MIN_COMMIT_MS:
            raise ClientError(f"buffer too small: {session.uncommitted_ms:.0f} ms of audio; at least "
                              f"{MIN_COMMIT_MS} ms are needed", "input_audio_buffer_commit_empty")
        session.commit_input()

    def _clear(self, message: dict[str, Any]) -> None:
        self._session().clear_input()
        self._emit("input_audio_buffer.cleared")

    def _item_create(self, message: dict[str, Any]) -> None:
        session = self._session()
        item = message.get("item")
        if not isinstance(item, dict):
            raise ClientError("conversation.item.create needs an 'item' object", param="item")
        kind = item.get("type")
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise ClientError("a function_call_output needs 'call_id' and 'output' strings", param="item")
            if not session.add_tool_output(call_id, output):
                raise ClientError(f"no function call {call_id!r} is waiting for output", "invalid_call_id",
                                  "item.call_id")
            stored: dict[str, Any] = {"id": self._new_id("item"), "object": "realtime.item",
                                      "type": "function_call_output", "call_id": call_id, "output": output,
                                      "status": "completed"}
        elif kind == "message":
            role = item.get("role")
            content = item.get("content")
            if role not in ("user", "assistant", "system") or not isinstance(content, list):
                raise ClientError("a message item needs a role (user, assistant, system) and a content list",
                                  param="item")
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in ("input_text", "text", "output_text"):
                    raise ClientError("message content must be text parts (input_text, output_text); send "
                                      "speech with input_audio_buffer.append", "unsupported", "item.content")
                if not isinstance(part.get("text"), str):
                    raise ClientError("a text part needs 'text'", param="item.content")
                texts.append(part["text"])
            given = item.get("id")
            item_id = given if isinstance(given, str) and given else self._new_id("item")
            session.add_text(" ".join(texts), role, item_id)
            part_type = {"user": "input_text", "system": "input_text", "assistant": "output_text"}[role]
            stored = {"id": item_id, "object": "realtime.item", "type": "message", "role": role,
                      "status": "completed", "content": [{"type": part_type, "text": t} for t in texts]}
        else:
            raise ClientError(f"item type {kind!r} cannot be created; Parley takes messages and "
                              "function_call_output", "unsupported", "item.type")
        self._add_item(stored)

    def _item_retrieve(self, message: dict[str, Any]) -> None:
        item = self.items.get(str(message.get("item_id")))
        if item is None:
            raise ClientError(f"no item {message.get('item_id')!r} in this conversation", "item_not_found",
                              "item_id")
        self._emit("conversation.item.retrieved", item=item)

    def _item_truncate(self, message: dict[str, Any]) -> None:
        item_id, audio_end_ms = message.get("item_id"), message.get("audio_end_ms")
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
            raise ClientError("audio_end_ms must be an integer >= 0", param="audio_end_ms")
        if not isinstance(item_id, str) or item_id not in self.items:
            raise ClientError(f"no item {item_id!r} in this conversation", "item_not_found", "item_id")
        if self.speaking is not None and self.speaking.item_id == item_id:
            # The client stopped playing this reply: stop it as a barge-in would (the session answers with the
            # truncation, dated by what was sent).
            self._session().cancel_response()
        else:
            self._emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)

    def _item_delete(self, message: dict[str, Any]) -> None:
        item_id = message.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.items:
            raise ClientError(f"no item {item_id!r} in this conversation", "item_not_found", "item_id")
        self._session().delete_item(item_id)
        del self.items[item_id]
        self._emit("conversation.item.deleted", item_id=item_id)

    def _response_create(self, message: dict[str, Any]) -> None:
        options = message.get("response") or {}
        if not isinstance(options, dict):
            raise ClientError("'response' must be an object", param="response")
        if options.get("conversation") not in (None, "auto"):
            raise ClientError("out-of-band responses (conversation 'none') are not supported", "unsupported",
                              "response.conversation")
        if options.get("input") is not None:
            raise ClientError("responses over a custom input are not supported", "unsupported", "response.input")
        self._session().create_response(_event_id(message))

    def _output_clear(self, message: dict[str, Any]) -> None:
        speaking = self.speaking
        self._session().cancel_response()
        if speaking is not None:
            self._emit("output_audio_buffer.cleared", response_id=speaking.id)

    # --- session events → GA server events -------------------------------------------------------------------

    def outgoing(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        handler = getattr(self, "_on_" + kind.replace(".", "_"), None)
        if handler is not None:
            handler(event)
        if self.extensions and kind in EXTENSION_EVENTS:
            fields = {k: v for k, v in event.items() if k not in ("type", "event_id")}
            self._emit(EXTENSION_EVENTS[kind], **fields)

    def _on_session_created(self, event: dict[str, Any]) -> None:
        session = self._session()
        rendered = render(session.id, self.wire, session.settings, self.extensions)
        if self.extensions:
            rendered["parley_clock"] = event["session"].get("clock")  # places session times on a local clock
        self._emit("session.created", session=rendered)

    def _on_input_audio_buffer_speech_started(self, event: dict[str, Any]) -> None:
        self._emit("input_audio_buffer.speech_started", item_id=event["item_id"],
                   audio_start_ms=_buffer_ms(event.get("audio_start_sample", 0)))

    def _on_input_audio_buffer_speech_stopped(self, event: dict[str, Any]) -> None:
        self._emit("input_audio_buffer.speech_stopped", item_id=event["item_id"],
                   audio_end_ms=_buffer_ms(event.get("audio_end_sample", 0)))

    def _on_input_audio_buffer_committed(self, event: dict[str, Any]) -> None:
        item_id = event["item_id"]
        self._emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=self._last_item)
        self._add_item({"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                        "status": "completed", "content": [{"type": "input_audio", "transcript": None}]})

    def _on_conversation_item_input_audio_transcription_delta(self, event: dict[str, Any]) -> None:
        if self.wire.transcription is not None:
            self._emit("conversation.item.input_audio_transcription.delta", item_id=event["item_id"],
                       content_index=0, delta=event["delta"])

    def _on_conversation_item_input_audio_transcription_completed(self, event: dict[str, Any]) -> None:
        item = self.items.get(event["item_id"])
        if item is not None:
            item["content"][0]["transcript"] = event["transcript"]
        if self.wire.transcription is not None:
            self._emit("conversation.item.input_audio_transcription.completed", item_id=event["item_id"],
                       content_index=0, transcript=event["transcript"],
                       usage={"type": "duration", "seconds": round(event.get("audio_ms", 0) / 1000.0, 2)})

    def _on_response_created(self, event: dict[str, Any]) -> None:
        session = self._session()
        response_id, item_id = event["response"]["id"], event["item_id"]
        state = _Response(response_id, item_id, session.settings.text_only)
        self._responses[response_id] = state
        self.speaking = state
        self._emit("response.created", response=self._response_object(state, "in_progress", []))
        item = self._message_item(state, "in_progress")
        self._emit("response.output_item.added", response_id=response_id, output_index=0, item=item)
        self._add_item(item, done=False)
        self._emit("response.content_part.added", response_id=response_id, item_id=item_id, output_index=0,
                   content_index=0, part=self._part(state))

    def _on_response_audio_transcript_delta(self, event: dict[str, Any]) -> None:
        state = self._responses.get(event["response_id"])
        if state is None:
            return
        state.transcript += event["delta"]
        kind = "response.output_text.delta" if state.text_only else "response.output_audio_transcript.delta"
        self._emit(kind, response_id=state.id, item_id=state.item_id, output_index=0, content_index=0,
                   delta=event["delta"])

    def _on_response_function_call_requested(self, event: dict[str, Any]) -> None:
        state = self._responses.get(event["response_id"])
        if state is None:
            return
        arguments = json.dumps(event["arguments"])
        item = {"id": self._new_id("item"), "object": "realtime.item", "type": "function_call",
                "status": "in_progress", "name": event["name"], "call_id": event["call_id"], "arguments": ""}
        common = {"response_id": state.id, "item_id": item["id"], "output_index": 1}
        self._emit("response.output_item.added", response_id=state.id, output_index=1, item=dict(item))
        self._add_item(item, done=False)
        self._emit("response.function_call_arguments.delta", **common, call_id=event["call_id"], delta=arguments)
        self._emit("response.function_call_arguments.done", **common, call_id=event["call_id"],
                   name=event["name"], arguments=arguments)
        item.update(status="completed", arguments=arguments)
        state.function_item = item

    def _on_conversation_item_truncate(self, event: dict[str, Any]) -> None:
        item = self.items.get(event["item_id"])
        if item is not None and item.get("content"):
            item["content"][0]["transcript"] = event.get("transcript", "")
        self._emit("conversation.item.truncated", item_id=event["item_id"], content_index=0,
                   audio_end_ms=int(event.get("audio_end_ms", 0)))

    def _on_response_done(self, event: dict[str, Any]) -> None:
        native = event["response"]
        state = self._responses.pop(native["id"], None)
        if state is None:
            return
        if self.speaking is state:
            self.speaking = None
        transcript = native.get("output_text") or state.transcript
        common = {"response_id": state.id, "item_id": state.item_id, "output_index": 0, "content_index": 0}
        if state.text_only:
            self._emit("response.output_text.done", **common, text=transcript)
        else:
            self._emit("response.output_audio.done", **common)
            self._emit("response.output_audio_transcript.done", **common, transcript=transcript)
        status = {"completed": "completed", "cancelled": "cancelled"}.get(native.get("status"), "incomplete")
        state.transcript = transcript
        self._emit("response.content_part.done", **common, part=self._part(state))
        item = self._message_item(state, "completed" if status == "completed" else "incomplete")
        self._emit("response.output_item.done", response_id=state.id, output_index=0, item=item)
        self.items[state.item_id] = item
        self._emit("conversation.item.done", item=item)
        output = [item]
        if state.function_item is not None:
            self._emit("response.output_item.done", response_id=state.id, output_index=1, item=state.function_item)
            self.items[state.function_item["id"]] = state.function_item
            self._emit("conversation.item.done", item=state.function_item)
            output.append(state.function_item)
        response = self._response_object(state, status, output)
        usage = native.get("usage") or {}
        response["usage"] = {"total_tokens": usage.get("total_tokens", 0), "input_tokens": usage.get("input_tokens", 0),
                             "output_tokens": usage.get("output_tokens", 0),
                             "input_token_details": {"text_tokens": usage.get("input_tokens", 0), "audio_tokens": 0,
                                                     "cached_tokens": 0},
                             "output_token_details": {"text_tokens": usage.get("output_tokens", 0),
                                                      "audio_tokens": 0}}
        if status != "completed":
            reason = (native.get("status_details") or {}).get("reason")
            details: dict[str, Any] = {"type": status}
            if reason in STATUS_REASONS:
                details["reason"] = STATUS_REASONS[reason]
            response["status_details"] = details
        if self.extensions:
            response["parley_metrics"] = native.get("metrics", {})
        self._emit("response.done", response=response)
        settings = self._session().settings
        self._emit("rate_limits.updated", rate_limits=[
            {"name": "tokens", "limit": settings.context_tokens, "remaining": settings.context_tokens,
             "reset_seconds": 0.0},
        ])

    def _on_conversation_item_deleted(self, event: dict[str, Any]) -> None:
        # A false end of turn: the caller's first part and the dropped reply leave the conversation.
        if self.items.pop(event["item_id"], None) is not None:
            self._emit("conversation.item.deleted", item_id=event["item_id"])

    def _on_input_audio_buffer_dtmf(self, event: dict[str, Any]) -> None:
        self._emit("input_audio_buffer.dtmf_event_received", event=event["digit"], received_at=int(time.time()))

    def _on_error(self, event: dict[str, Any]) -> None:
        error = event["error"]
        self._emit("error", error={"type": error.get("type", "server_error"), "code": error.get("code"),
                                   "message": error.get("message", ""), "param": error.get("param"),
                                   "event_id": error.get("event_id")})

    # --- output audio (WebSocket) ----------------------------------------------------------------------------

    def audio_out(self, frame: np.ndarray, encode: Callable[[np.ndarray], bytes] | None = None) -> None:
        """One frame of reply audio (float32 at 24 kHz) as a response.output_audio.delta."""
        state = self.speaking
        if state is None or state.text_only:
            return  # audio of a response already done (cancelled) never follows its response.done
        payload = encode(frame) if encode is not None else to_int16(frame).tobytes()
        self._emit("response.output_audio.delta", response_id=state.id, item_id=state.item_id, output_index=0,
                   content_index=0, delta=base64.b64encode(payload).decode("ascii"))

    # --- plumbing --------------------------------------------------------------------------------------------

    def _response_object(self, state: _Response, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        session = self._session()
        fmt = self.wire.output_format
        return {
            "id": state.id, "object": "realtime.response", "status": status, "output": output,
            "conversation_id": f"conv_{session.id}", "output_modalities": ["text"] if state.text_only else ["audio"],
            "max_output_tokens": session.settings.max_response_tokens, "metadata": None,
            "audio": {"output": {"format": {"type": fmt, "rate": 24000} if fmt == "audio/pcm" else {"type": fmt},
                                 "voice": self.wire.voice or session.settings.voice}},
        }

    def _message_item(self, state: _Response, status: str) -> dict[str, Any]:
        if state.text_only:
            content = [{"type": "output_text", "text": state.transcript}]
        else:
            content = [{"type": "output_audio", "transcript": state.transcript}]
        return {"id": state.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": content if status != "in_progress" else []}

    @staticmethod
    def _part(state: _Response) -> dict[str, Any]:
        return {"type": "text", "text": state.transcript} if state.text_only else \
            {"type": "audio", "transcript": state.transcript}

    def _add_item(self, item: dict[str, Any], done: bool = True) -> None:
        self.items[item["id"]] = item
        self._emit("conversation.item.added", previous_item_id=self._last_item, item=dict(item))
        if done:
            self._emit("conversation.item.done", previous_item_id=self._last_item, item=dict(item))
        self._last_item = item["id"]

    def _error(self, exc: ClientError, event_id: str | None) -> None:
        self._emit("error", error={"type": exc.kind, "code": exc.code, "message": str(exc), "param": exc.param,
                                   "event_id": event_id})

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_c{self._ids}"  # "_c": never one of the session's own `item_N` ids

    def _emit(self, type_: str, **fields: Any) -> None:
        self._ids += 1
        self._send({"type": type_, "event_id": f"event_{self._ids}", **fields})


def _event_id(message: dict[str, Any]) -> str | None:
    value = message.get("event_id")
    return value if isinstance(value, str) else None


def _buffer_ms(sample: int) -> int:
    """A 16 kHz sample index of the session's input as GA's ms since the start of the input audio."""
    return int(sample * 1000 // 16000)


def encoder(kind: str) -> Callable[[np.ndarray], bytes] | None:
    """The G.711 encoder for an output format (frames must already be at 8 kHz), None for audio/pcm."""
    return {"audio/pcmu": lambda f: g711.encode(f, "PCMU"),
            "audio/pcma": lambda f: g711.encode(f, "PCMA")}.get(kind)


