"""What the two phone transports share: G.711 at 8 kHz to and from the engine, the 20 ms send clock, and the
per-number session settings.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import numpy as np
from aiohttp import web

from realtime.audio import ENGINE_RATE, Resampler
from realtime.config import SessionConfig, number_key
from realtime.transports import g711

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.session import Session

CALL_ROUTE = "/telephony/calls/{call_id}"
FRAME_MS = 20
FRAME_SAMPLES = g711.RATE * FRAME_MS // 1000
# After a stall the clock sends the missed frames back to back, but only this many: a phone's jitter buffer
# absorbs a short burst, while a long one would only play late audio fast.
MAX_CATCH_UP_FRAMES = 5


class PhoneAudio:
    """G.711 payloads in, 16 kHz float32 for the engine out; 8 kHz float32 frames in, G.711 out."""

    def __init__(self, codec: g711.Codec) -> None:
        self.codec = codec
        self._up = Resampler(g711.RATE, ENGINE_RATE)

    def decode(self, payload: bytes) -> np.ndarray:
        return self._up.process(g711.decode(payload, self.codec))

    def encode(self, frame: np.ndarray) -> bytes:
        return g711.encode(frame, self.codec)


class FrameClock:
    """Wakes every 20 ms on the wall clock, so what is sent is what a phone plays in the same time."""

    def __init__(self, frame_ms: int = FRAME_MS) -> None:
        self.period = frame_ms / 1000.0
        self._next: float | None = None
        self.late_frames = 0
        self.skipped_frames = 0

    async def tick(self) -> None:
        now = time.monotonic()
        if self._next is None:
            self._next = now
        wait = self._next - now
        if wait > 0:
            await asyncio.sleep(wait)
        elif -wait > MAX_CATCH_UP_FRAMES * self.period:
            missed = int(-wait / self.period)
            self.skipped_frames += missed
            self._next += missed * self.period
        elif -wait > self.period / 4:
            self.late_frames += 1
        self._next += self.period


def settings_for(engine: Engine, number: str) -> SessionConfig:
    """The session settings for a call to `number`: [session] plus that number's overrides, if configured."""
    key = number_key(number)
    for entry in engine.config.telephony.numbers:
        if key and number_key(entry.number) == key:
            return engine.session_settings(entry.session, f"telephony.numbers.{entry.number}.session")
    return engine.session_settings(None)


_DIRECTORY: web.AppKey[dict[str, Session]] = web.AppKey("telephony_calls", dict)


def directory(app: web.Application) -> dict[str, Session]:
    """Live phone calls by the provider's call id (Twilio CallSid/streamSid, SIP Call-ID), shared by both
    transports; the first caller also adds `GET /telephony/calls/{call_id}`, which answers with the session id
    and its events_token so an operator (or a test) can find a call's session and watch it on the event tap.
    The provider's call id is the secret here: only the provider, the caller and Parley know it (with an API
    key configured the lookup needs the key too, like everything under /telephony/)."""
    if _DIRECTORY not in app:
        calls: dict[str, Session] = {}
        app[_DIRECTORY] = calls

        async def lookup(request: web.Request) -> web.Response:
            session = calls.get(request.match_info["call_id"])
            if session is None:
                return web.json_response({"error": {"type": "not_found", "message": "no live call with that id"}},
                                         status=404)
            # The session clock's origin on this host's monotonic clock, as session.created announces it.
            origin = time.monotonic() - session.now_ms() / 1000.0
            return web.json_response({"session_id": session.id, "events_token": session.events_token,
                                      "transport": session.link.kind,
                                      "clock": {"monotonic_origin_s": origin}})

        app.router.add_get(CALL_ROUTE, lookup)
    return app[_DIRECTORY]
