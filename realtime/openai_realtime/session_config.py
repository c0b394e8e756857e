"""GA session objects ↔ Parley's [session] settings.

A GA `session.update` carries fields of two kinds: those Parley's session settings already have (instructions,
turn detection, voice, token limit), mapped here onto [session] overrides, and those only the wire protocol
needs (audio formats, whether input transcripts are sent, client-run tools), kept in `WireSettings`. Both are
validated before either is applied, so a refused update changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Literal

from models.interfaces import ToolSpec
from realtime.config import SessionConfig

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
FORMAT_RATES: dict[str, int] = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
EAGERNESS = ("low", "medium", "high", "auto")  # semantic_vad's values, Parley's [session].eagerness
MAX_OUTPUT_TOKENS_INF = 1024  # "inf": Parley's LMs still need a bound
# Fields GA clients send that change nothing here (accepted so that existing clients work; see the docs).
IGNORED_SESSION_KEYS = frozenset({"tracing", "truncation", "include", "parallel_tool_calls", "reasoning",
                                  "expires_at", "object", "id", "client_secret"})
SESSION_KEYS = frozenset({"type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
                          "max_output_tokens", "prompt", "parley"}) | IGNORED_SESSION_KEYS


class SessionUpdateError(ValueError):
    """A session object Parley cannot apply; `param` names the field (GA error `param`)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class WireSettings:
    model: str = "parley"
    input_format: AudioFormat = "audio/pcm"
    output_format: AudioFormat = "audio/pcm"
    transcription: dict[str, Any] | None = None  # None: no input transcription events (GA's default)
    turn_detection: Literal["server_vad", "semantic_vad", "none"] = "server_vad"  # as the client last set it
    prefix_padding_ms: int = 240  # reported; Parley's pre-roll is fixed (realtime/listener.py)
    voice: str = ""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: Literal["auto", "none"] = "auto"
    max_output_tokens: int | Literal["inf"] | None = None


def parse_update(session: Any, wire: WireSettings, base: SessionConfig) -> tuple[dict[str, Any], WireSettings]:
    """The [session] overrides and wire settings a GA session object asks for; raises SessionUpdateError.

    `base` is the session's current settings.
    """
    if not isinstance(session, dict):
        raise SessionUpdateError("session", "session.update needs a 'session' object")
    unknown = sorted(set(session) - SESSION_KEYS)
    if unknown:
        raise SessionUpdateError(f"session.{unknown[0]}", f"unknown session field {unknown[0]!r}",
                                 "unknown_parameter")
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise SessionUpdateError("session.type", f"session type {kind!r} is not supported; Parley serves "
                                 "'realtime' sessions (transcription-only sessions are not offered)", "unsupported")
    if session.get("prompt") is not None:
        raise SessionUpdateError("session.prompt", "stored prompts are not supported; send 'instructions'",
                                 "unsupported")
    overrides: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    if "model" in session:
        changes["model"] = _string(session["model"], "session.model")
    if "instructions" in session:
        overrides["instructions"] = _string(session["instructions"], "session.instructions")
    if "output_modalities" in session:
        modalities = session["output_modalities"]
        if not isinstance(modalities, list) or not modalities or not set(modalities) <= {"audio", "text"}:
            raise SessionUpdateError("session.output_modalities", "output_modalities must be ['audio'] or ['text']")
        overrides["text_only"] = "audio" not in modalities
    if "max_output_tokens" in session:
        limit = session["max_output_tokens"]
        if limit == "inf" or limit is None:
            overrides["max_response_tokens"] = MAX_OUTPUT_TOKENS_INF
        elif isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 4096:
            overrides["max_response_tokens"] = limit
        else:
            raise SessionUpdateError("session.max_output_tokens", "max_output_tokens must be 1..4096 or 'inf'")
        changes["max_output_tokens"] = limit
    if "tools" in session:
        changes["tools"] = _tools(session["tools"])
    if "tool_choice" in session:
        choice = session["tool_choice"]
        if choice not in ("auto", "none"):
            raise SessionUpdateError("session.tool_choice", "tool_choice must be 'auto' or 'none' (forcing a "
                                     "tool is not supported)", "unsupported")
        changes["tool_choice"] = choice
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise SessionUpdateError("session.audio", "audio must be an object")
        _audio_input(audio.get("input"), overrides, changes, base)
        _audio_output(audio.get("output"), overrides, changes)
    parley = session.get("parley")
    if parley is not None:
        # Parley's own [session] keys (speculate_after_ms, barge_in_ms, ...), validated like the config file.
        if not isinstance(parley, dict):
            raise SessionUpdateError("session.parley", "parley must be an object of [session] keys")
        overrides.update(parley)
    return overrides, replace(wire, **changes)


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise SessionUpdateError(param, f"{param} must be a string")
    return value


def _format(value: Any, param: str) -> AudioFormat:
    if not isinstance(value, dict) or value.get("type") not in FORMAT_RATES:
        raise SessionUpdateError(param, f"{param} must be {{'type': 'audio/pcm', 'rate': 24000}}, "
                                 "{'type': 'audio/pcmu'} or {'type': 'audio/pcma'}", "unsupported")
    kind: AudioFormat = value["type"]
    if kind == "audio/pcm" and value.get("rate", 24000) != 24000:
        raise SessionUpdateError(f"{param}.rate", "audio/pcm is 24000 Hz", "unsupported")
    return kind


def _tools(value: Any) -> tuple[ToolSpec, ...]:
    if not isinstance(value, list):
        raise SessionUpdateError("session.tools", "tools must be a list")
    tools = []
    for i, tool in enumerate(value):
        where = f"session.tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise SessionUpdateError(where, "only function tools are supported (no MCP servers)", "unsupported")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise SessionUpdateError(f"{where}.name", "a function tool needs a name")
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise SessionUpdateError(f"{where}.parameters", "parameters must be a JSON schema object")
        tools.append(ToolSpec(name, str(tool.get("description") or ""), parameters))
    return tuple(tools)


def _audio_input(value: Any, overrides: dict[str, Any], changes: dict[str, Any], base: SessionConfig) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise SessionUpdateError("session.audio.input", "audio.input must be an object")
    if value.get("format") is not None:
        changes["input_format"] = _format(value["format"], "session.audio.input.format")
    if "transcription" in value:
        transcription = value["transcription"]
        if transcription is not None and not isinstance(transcription, dict):
            raise SessionUpdateError("session.audio.input.transcription", "transcription must be an object or null")
        changes["transcription"] = transcription
    if "turn_detection" not in value:
        return
    detection = value["turn_detection"]
    if detection is None:
        overrides["manual_turns"] = True
        changes["turn_detection"] = "none"
        return
    if not isinstance(detection, dict) or detection.get("type") not in ("server_vad", "semantic_vad"):
        raise SessionUpdateError("session.audio.input.turn_detection.type",
                                 "turn_detection must be null, {'type': 'server_vad', ...} or "
                                 "{'type': 'semantic_vad', ...}")
    overrides["manual_turns"] = False
    changes["turn_detection"] = detection["type"]
    for key, setting in (("create_response", "create_response"), ("interrupt_response", "interrupt_response")):
        if detection.get(key) is not None:
            overrides[setting] = detection[key]
    if detection["type"] == "server_vad":
        overrides["turn_detection"] = "silence"
        if detection.get("threshold") is not None:
            overrides["vad_threshold"] = detection["threshold"]
        if detection.get("silence_duration_ms") is not None:
            silence = detection["silence_duration_ms"]
            if not isinstance(silence, int) or isinstance(silence, bool) or silence < 50:
                raise SessionUpdateError("session.audio.input.turn_detection.silence_duration_ms",
                                         "silence_duration_ms must be an integer >= 50")
            overrides["end_of_turn_ms"] = silence
            # The draft must start before the end of the turn to be worth anything.
            overrides["speculate_after_ms"] = min(base.speculate_after_ms, silence // 2)
        if isinstance(detection.get("prefix_padding_ms"), int):
            changes["prefix_padding_ms"] = detection["prefix_padding_ms"]
    else:
        eagerness = detection.get("eagerness") or "auto"
        if eagerness not in EAGERNESS:
            raise SessionUpdateError("session.audio.input.turn_detection.eagerness",
                                     "eagerness must be low, medium, high or auto")
        overrides["turn_detection"] = "semantic"
        overrides["eagerness"] = eagerness


def _audio_output(value: Any, overrides: dict[str, Any], changes: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise SessionUpdateError("session.audio.output", "audio.output must be an object")
    if value.get("format") is not None:
        changes["output_format"] = _format(value["format"], "session.audio.output.format")
    voice = value.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if voice is not None:
        changes["voice"] = _string(voice, "session.audio.output.voice")
        overrides["voice"] = voice  # a name the stack lacks keeps its default voice
    if value.get("speed") is not None:
        overrides["speed"] = value["speed"]


def render(session_id: str, wire: WireSettings, s: SessionConfig, extensions: bool = False) -> dict[str, Any]:
    """The GA session object (session.created / session.updated) for the current settings."""
    detection: dict[str, Any] | None
    if s.manual_turns:
        detection = None
    elif s.turn_detection == "semantic":
        detection = {"type": "semantic_vad", "eagerness": s.eagerness, "create_response": s.create_response,
                     "interrupt_response": s.interrupt_response}
    else:
        detection = {"type": "server_vad", "threshold": s.vad_threshold, "prefix_padding_ms": wire.prefix_padding_ms,
                     "silence_duration_ms": s.end_of_turn_ms, "create_response": s.create_response,
                     "interrupt_response": s.interrupt_response, "idle_timeout_ms": None}

    def fmt(kind: str) -> dict[str, Any]:
        return {"type": kind, "rate": 24000} if kind == "audio/pcm" else {"type": kind}

    rendered: dict[str, Any] = {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": wire.model,
        "output_modalities": ["text"] if s.text_only else ["audio"],
        "instructions": s.instructions,
        "audio": {
            "input": {"format": fmt(wire.input_format), "transcription": wire.transcription,
                      "noise_reduction": None, "turn_detection": detection},
            "output": {"format": fmt(wire.output_format), "voice": wire.voice or s.voice, "speed": s.speed},
        },
        "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
                  for t in wire.tools],
        "tool_choice": wire.tool_choice,
        "max_output_tokens": wire.max_output_tokens if wire.max_output_tokens is not None else s.max_response_tokens,
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "include": None,
    }
    if extensions:
        # Parley's own settings for this session (settable through session.parley).
        rendered["parley"] = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "clone_audio"}
    return rendered
