"""Which caller the harness dials with: WebRTC (benchmarks.client; Parley's /offer or OpenAI Realtime's
/v1/realtime/calls) or Twilio Media Streams (if present).

Every caller has ParleyCall's API: `connect()`, `play(samples, rate, marks)`, `mic.mark_times`, `mic.idle`,
`received` (times, levels, pts), `events`, `wait_for(...)`, `server_time(ms)`, `close()`.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from benchmarks.client import ParleyCall, Received

TRANSPORTS = ("webrtc", "openai", "twilio")


class Caller(Protocol):
    """Marks (name -> monotonic send time) live in `mic.mark_times` (WebRTC) or `mark_times` (Twilio)."""

    session_id: str | None
    events: list[tuple[float, dict[str, Any]]]
    received: Received

    async def connect(self, timeout: float = 20.0) -> None: ...

    def play(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> float: ...

    async def play_and_wait(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> None: ...

    async def wait_for(self, kind: str, timeout: float = 30.0, after: float = 0.0, where: Any = None
                       ) -> dict[str, Any]: ...

    def server_time(self, session_ms: float) -> float: ...

    async def close(self) -> None: ...


class TransportError(RuntimeError):
    pass


def make_caller(transport: str, url: str, session: dict[str, Any], keep_audio: bool = False,
                preencoded: bool = False) -> Caller:
    if transport == "webrtc":
        return ParleyCall(url, session=session, keep_audio=keep_audio, preencoded=preencoded)
    if transport == "openai":
        # The same WebRTC call through OpenAI Realtime's flow (POST /v1/realtime/calls, `oai-events`), with
        # Parley's overrides in the GA session's `parley` field and its metrics as extension events.
        ga = {"type": "realtime", "audio": {"input": {"transcription": {"model": "parley"}}}, "parley": session}
        return ParleyCall(url, session=ga, keep_audio=keep_audio, preencoded=preencoded, openai=True,
                          extensions=True)
    if transport == "twilio":
        if session:
            # A Twilio call cannot carry overrides: its settings come from [telephony.numbers] in the config.
            raise TransportError("--transport twilio takes session settings from the server's [telephony.numbers]; "
                                 "--compare and --session need --transport webrtc")
        cls = _twilio_class()
        caller: Caller = cls(url, keep_audio=keep_audio)
        return caller
    raise TransportError(f"unknown transport {transport!r} (known: {', '.join(TRANSPORTS)})")


def _twilio_class() -> Any:
    try:
        module = importlib.import_module("benchmarks.twilio_client")
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.twilio_client":
            raise
        raise TransportError("--transport twilio needs benchmarks/twilio_client.py (not in this checkout)") from None
    for name in ("TwilioCall", "TwilioCaller", "TwilioMediaStreamCall"):
        if hasattr(module, name):
            return getattr(module, name)
    # Whatever it is called: the one class in the module with the caller API.
    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.__name__ and all(
            callable(getattr(value, m, None)) for m in ("connect", "play", "wait_for", "server_time", "close")
        ):
            return value
    raise TransportError("benchmarks/twilio_client.py defines no caller class with ParleyCall's API")
