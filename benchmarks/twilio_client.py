"""A Twilio Media Streams caller for Parley: what Twilio does on a real call, over Parley's /telephony/twilio.

It mirrors `benchmarks.client.ParleyCall` so the tests and the latency harness drive a phone call the way they
drive a WebRTC one: `connect()`, `play(samples, rate, marks)` (sent in real time as 20 ms µ-law frames),
`received` (reply audio with arrival times), `events` (from the session's event tap), `wait_for`, `server_time`.

Like Twilio it plays the reply in real time from a buffer, echoes each `mark` once the audio before it has
played, and on `clear` drops what it has not played yet and echoes the pending marks at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import deque
from typing import Any

import aiohttp
import numpy as np

from benchmarks.client import EventLog, Received
from benchmarks.sipp_media import to_8k
from realtime.transports import g711
from realtime.transports.phone import FRAME_SAMPLES, FrameClock

RATE = g711.RATE


class TwilioCall(EventLog):
    """One Media Streams call to a Parley server; `to` selects the per-number session settings."""

    def __init__(self, url: str, to: str = "", from_: str = "+15550000000", keep_audio: bool = True,
                 echo_marks: bool = True) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.to = to
        self.from_ = from_
        self.keep_audio = keep_audio
        self.echo_marks = echo_marks
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.received = Received()
        self.messages: list[tuple[float, dict[str, Any]]] = []  # every Media Streams message Parley sent
        self.mark_times: dict[str, float] = {}  # play() marks: when that sample went out
        self.echoed_marks: list[str] = []  # Parley's marks, in the order the phone echoed them
        self.session_id: str | None = None
        self.server_clock_origin: float | None = None
        self.close_code: int | None = None
        self.played_samples = 0  # reply audio the simulated phone has played
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tap: aiohttp.ClientWebSocketResponse | None = None
        self._mic: deque[np.ndarray] = deque()
        self._mic_marks: list[tuple[int, str]] = []
        self._mic_queued = 0
        self._mic_sent = 0
        self._speaker: deque[np.ndarray | str] = deque()  # reply frames and mark names, in arrival order
        self._tasks: list[asyncio.Task[None]] = []
        self._receiver: asyncio.Task[None] | None = None
        self._seq = 0

    # --- setup -----------------------------------------------------------------------------------------------

    async def connect(self, timeout: float = 20.0, tap: bool = True) -> None:
        self._http = aiohttp.ClientSession()
        ws_url = self.url.replace("http://", "ws://").replace("https://", "wss://") + "/telephony/twilio"
        self._ws = await self._http.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=timeout))
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({
            "event": "start", "streamSid": self.stream_sid,
            "start": {
                "streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"], "customParameters": {"to": self.to, "from": self.from_},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            },
        })
        self._receiver = asyncio.create_task(self._receive())
        self._tasks += [asyncio.create_task(self._microphone()), asyncio.create_task(self._speaker_loop())]
        if tap:
            await self._open_tap(timeout)

    async def _open_tap(self, timeout: float) -> None:
        assert self._http is not None
        deadline = time.monotonic() + timeout
        while True:
            async with self._http.get(f"{self.url}/telephony/calls/{self.call_sid}") as r:
                if r.status == 200:
                    found = await r.json()
                    break
            if time.monotonic() > deadline or self.close_code is not None:
                raise RuntimeError(f"Parley did not take the stream (closed with {self.close_code})")
            await asyncio.sleep(0.02)
        self.session_id = found["session_id"]
        self.server_clock_origin = found["clock"]["monotonic_origin_s"]
        self._tap = await self._http.ws_connect(f"{self.url}/sessions/{self.session_id}/events",
                                                headers={"Authorization": f"Bearer {found['events_token']}"})
        self._tasks.append(asyncio.create_task(self._read_tap()))

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        self._seq += 1
        await self._ws.send_str(json.dumps({"sequenceNumber": str(self._seq), **message}))

    # --- the caller's microphone -------------------------------------------------------------------------------

    def play(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> float:
        """Queue audio for real-time sending; returns its duration in seconds. Marks are in input samples."""
        audio = to_8k(samples, rate)
        for name, offset in (marks or {}).items():
            self._mic_marks.append((self._mic_queued + int(offset * RATE / rate), name))
        self._mic.append(audio)
        self._mic_queued += audio.size
        return samples.size / rate

    async def play_and_wait(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> None:
        self.play(samples, rate, marks)
        while self._mic:  # noqa: ASYNC110 - the microphone drains on its own 20 ms clock
            await asyncio.sleep(0.01)

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def _microphone(self) -> None:
        """Twilio streams the caller's line continuously: speech when queued, µ-law silence otherwise."""
        clock = FrameClock()
        buffer = np.zeros(0, np.float32)
        chunk = 0
        try:
            while True:
                await clock.tick()
                while buffer.size < FRAME_SAMPLES and self._mic:
                    buffer = np.concatenate([buffer, self._mic.popleft()])
                frame = np.zeros(FRAME_SAMPLES, np.float32)
                take = min(FRAME_SAMPLES, buffer.size)
                frame[:take], buffer = buffer[:take], buffer[take:]
                self._mic_sent += take
                now = time.monotonic()
                while self._mic_marks and self._mic_marks[0][0] <= self._mic_sent:
                    self.mark_times[self._mic_marks.pop(0)[1]] = now
                chunk += 1
                payload = base64.b64encode(g711.encode(frame, "PCMU")).decode("ascii")
                await self.send({"event": "media", "streamSid": self.stream_sid, "media": {
                    "track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20), "payload": payload}})
        except (ConnectionError, RuntimeError):
            return

    # --- what Parley sends -----------------------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.monotonic()
            message = json.loads(msg.data)
            self.messages.append((now, message))
            kind = message.get("event")
            if kind == "media":
                pcm = g711.decode(base64.b64decode(message["media"]["payload"]), "PCMU").astype(np.float32) / 32768
                level = 20.0 * np.log10(max(float(np.sqrt(np.mean(pcm * pcm))), 1e-6))
                self.received.times.append(now)
                self.received.levels.append(level)
                if self.keep_audio:
                    self.received.chunks.append(pcm)
                self._speaker.append(pcm)
            elif kind == "mark":
                self._speaker.append(message["mark"]["name"])
            elif kind == "clear":
                pending = [m for m in self._speaker if isinstance(m, str)]
                self._speaker.clear()
                for name in pending:
                    await self._echo_mark(name)
            self.changed()
        self.close_code = self._ws.close_code
        self.changed()

    async def _speaker_loop(self) -> None:
        """Plays buffered reply audio in real time and echoes marks as the audio before them finishes."""
        clock = FrameClock()
        try:
            while True:
                await clock.tick()
                while self._speaker and isinstance(self._speaker[0], str):
                    await self._echo_mark(str(self._speaker.popleft()))
                if self._speaker:
                    frame = self._speaker.popleft()
                    assert not isinstance(frame, str)
                    self.played_samples += frame.size
        except (ConnectionError, RuntimeError):
            return

    async def _echo_mark(self, name: str) -> None:
        if self.echo_marks and self._ws is not None and not self._ws.closed:
            self.echoed_marks.append(name)
            await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _read_tap(self) -> None:
        assert self._tap is not None
        async for msg in self._tap:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            self.record(json.loads(msg.data))

    # --- queries (as ParleyCall) -------------------------------------------------------------------------------

    def sent(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        """Media Streams messages of one kind Parley sent (media, mark, clear), with arrival times."""
        return [(t, m) for t, m in self.messages if m.get("event") == kind]

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Until Parley closes the stream; its WebSocket close code."""
        deadline = time.monotonic() + timeout
        while self.close_code is None and time.monotonic() < deadline:
            await self.wait_changed(deadline - time.monotonic())
        return self.close_code

    def server_time(self, session_ms: float) -> float:
        """A server session timestamp (ms) on this machine's monotonic clock (same host only)."""
        if self.server_clock_origin is None:
            raise RuntimeError("the call has no session clock (connect with tap=True)")
        return self.server_clock_origin + session_ms / 1000.0

    async def close(self, stop: bool = True) -> None:
        """Hang up: `stop` as Twilio sends it, then the WebSocket closes."""
        for task in self._tasks:
            task.cancel()
        if stop and self._ws is not None and not self._ws.closed:
            try:
                await self.send({"event": "stop", "streamSid": self.stream_sid,
                                 "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})
            except (ConnectionError, RuntimeError):
                pass
        for ws in (self._ws, self._tap):
            if ws is not None:
                await ws.close()
        tasks = [*self._tasks, *([self._receiver] if self._receiver else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
