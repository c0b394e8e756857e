"""A real WebRTC caller for Parley, built on aiortc: what the tests and the latency harness use.

It plays audio into the call in real time (20 ms frames, like a microphone), records the reply audio with the
time each frame arrived, and keeps every data-channel event with its arrival time. Its own receive buffer is
Parley's in-order buffer, so reply timings measure the server and the network, not a client jitter buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from benchmarks.opus_mic import OpusMic
from benchmarks.wire import WireLog, watch_receiver
from realtime.audio import Resampler, to_int16
from realtime.config import IceConfig
from realtime.transports import ice
from realtime.transports.aiortc_tuning import tune_receiver
from realtime.transports.trackclock import TrackClock

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
SPEECH_DBFS = -45.0


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit WAV as float32 and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        return data.astype(np.float32) / 32768.0, w.getframerate()


def to_48k(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return samples.astype(np.float32)
    r = Resampler(rate, RATE)
    out = r.process(samples)
    return np.concatenate([out, r.process(np.zeros(rate // 10, np.float32))])[: int(samples.size * RATE / rate)]


class MicTrack(MediaStreamTrack):
    """Sends queued audio in real time, silence otherwise; records when marked samples went out."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._buffer = np.zeros(0, np.float32)
        self._sent = 0  # samples of queued audio sent so far
        self._queued = 0
        self._marks: list[tuple[int, str]] = []
        self.mark_times: dict[str, float] = {}
        self._clock = TrackClock(RATE)

    def enqueue(self, samples48k: np.ndarray, marks: dict[str, int] | None = None) -> None:
        """Queue audio; `marks` name sample offsets inside it whose send time should be recorded."""
        for name, offset in (marks or {}).items():
            self._marks.append((self._queued + offset, name))
        self._queue.append(samples48k.astype(np.float32))
        self._queued += samples48k.size

    @property
    def idle(self) -> bool:
        return not self._queue and self._buffer.size == 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._clock.next_frame(FRAME)
        while self._buffer.size < FRAME and self._queue:
            self._buffer = np.concatenate([self._buffer, self._queue.popleft()])
        take = min(FRAME, self._buffer.size)
        out = np.zeros(FRAME, np.float32)
        out[:take] = self._buffer[:take]
        self._buffer = self._buffer[take:]
        self._sent += take
        now = time.monotonic()
        while self._marks and self._marks[0][0] <= self._sent:
            self.mark_times[self._marks.pop(0)[1]] = now
        frame = AudioFrame.from_ndarray(to_int16(out)[None, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = pts
        frame.time_base = Fraction(1, RATE)
        return frame


@dataclass
class Received:
    """Reply audio as it arrived: one entry per 20 ms frame."""

    times: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    # Media timestamps (48 kHz samples, from RTP): where each frame belongs on the sender's clock, for pacing.
    pts: list[int] = field(default_factory=list)

    def onset_after(self, t: float, dbfs: float = SPEECH_DBFS) -> float | None:
        for at, level in zip(self.times, self.levels, strict=True):
            if at >= t and level > dbfs:
                return at
        return None

    def speech_ms_between(self, t0: float, t1: float, dbfs: float = SPEECH_DBFS) -> float:
        return 20.0 * sum(1 for at, lv in zip(self.times, self.levels, strict=True) if t0 <= at < t1 and lv > dbfs)

    def last_speech_before(self, t: float, dbfs: float = SPEECH_DBFS) -> float | None:
        found = None
        for at, level in zip(self.times, self.levels, strict=True):
            if at < t and level > dbfs:
                found = at
        return found

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    def gaps(self, t0: float, t1: float, late_ms: float = 60.0) -> tuple[int, int]:
        """(frames, late frames) between t0 and t1: a late frame arrived > late_ms after the previous one."""
        sel = [at for at in self.times if t0 <= at < t1]
        late = sum(1 for a, b in itertools.pairwise(sel) if (b - a) * 1000.0 > late_ms)
        return len(sel), late


class EventLog:
    """Server events with their arrival times (monotonic seconds), and waiting for one of them."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def record(self, event: dict[str, Any]) -> None:
        self.events.append((time.monotonic(), event))
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits on this call's state (an event arrived, the stream closed, ...)."""
        self._changed.set()

    async def wait_changed(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except TimeoutError:
            pass

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    def first_time(self, kind: str, after: float = 0.0) -> float | None:
        return next((t for t, e in self.events if e.get("type") == kind and t >= after), None)

    async def wait_for(self, kind: str, timeout: float = 30.0, after: float = 0.0,
                       where: Any = None) -> dict[str, Any]:
        """The first event of `kind` that arrived at or after `after` (monotonic s) and matches `where`."""
        deadline = time.monotonic() + timeout
        while True:
            for t, e in self.events:
                if e.get("type") == kind and t >= after and (where is None or where(e)):
                    return e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("type") for _, e in self.events[-12:]]
                raise TimeoutError(f"no {kind} within {timeout:.0f} s; last events: {seen}")
            await self.wait_changed(remaining)


def native_view(event: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI Realtime event with Parley's extensions, as the harness reads Parley's own protocol: the
    `parley.*` events under their native names, `response.done` metrics and the clock origin where they live there."""
    kind = str(event.get("type", ""))
    if kind.startswith("parley."):
        return {**event, "type": kind.removeprefix("parley.")}
    if kind == "response.done" and "parley_metrics" in event.get("response", {}):
        return {**event, "response": {**event["response"], "metrics": event["response"]["parley_metrics"]}}
    if kind == "session.created" and "parley_clock" in event.get("session", {}):
        return {**event, "session": {**event["session"], "clock": event["session"]["parley_clock"]}}
    return event


class ParleyCall(EventLog):
    """One call to a Parley server over WebRTC (loopback)."""

    def __init__(self, url: str, session: dict[str, Any] | None = None, keep_audio: bool = True,
                 preencoded: bool = False, token: str = "", openai: bool = False, extensions: bool = False) -> None:
        """`preencoded`: send Opus encoded once per distinct clip (benchmarks.opus_mic), for load generators.
        `token`: the API key or a client secret, for a server with authentication on.
        `openai`: call through OpenAI Realtime's WebRTC flow (POST /v1/realtime/calls, `oai-events`; `session` is
        then a GA session object) instead of Parley's /offer. `extensions`: with `openai`, ask for Parley's
        `parley.*` events and metrics, and record them under their native names so the harness reads them alike."""
        super().__init__()
        # aioice leaves loopback out of host candidates: in a loopback-only namespace a caller would have none.
        ice.install(IceConfig())
        self.url = url.rstrip("/")
        self.overrides = session or {}
        self.token = token
        self.keep_audio = keep_audio
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic: MicTrack | OpusMic = OpusMic() if preencoded else MicTrack()
        self.received = Received()
        self.wire = WireLog()  # reply packets' send and arrival times (RTP/RTCP), independent of their content
        self.session_id: str | None = None
        self.events_token = ""
        self.server_clock_origin: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = asyncio.Event()
        self.openai = openai
        self.extensions = extensions
        self.channel = self.pc.createDataChannel("oai-events" if openai else "events")

    async def connect(self, timeout: float = 20.0) -> None:
        pc = self.pc
        pc.addTrack(self.mic)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._record(track)))

        @self.channel.on("message")
        def on_message(message: str | bytes) -> None:
            event = json.loads(message)
            if self.openai and self.extensions:
                event = native_view(event)
            if event.get("type") == "session.created":
                self.server_clock_origin = event["session"].get("clock", {}).get("monotonic_origin_s")
            self.record(event)

        @self.channel.on("open")
        def on_open() -> None:
            self._opened.set()

        await pc.setLocalDescription(await pc.createOffer())
        for transceiver in pc.getTransceivers():
            tune_receiver(transceiver.receiver, 0)
            if transceiver.kind == "audio":
                watch_receiver(transceiver.receiver, self.wire)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession(headers=headers) as http:
            if self.openai:
                answer = await self._openai_offer(http, pc.localDescription.sdp, timeout)
            else:
                body = {"sdp": pc.localDescription.sdp, "type": "offer", "session": self.overrides}
                async with http.post(f"{self.url}/offer", json=body,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    answer = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"offer rejected ({r.status}): {answer}")
        self.session_id = answer["session_id"]
        self.events_token = str(answer.get("events_token", ""))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(self._opened.wait(), timeout)
        await self.wait_for("session.created", timeout=timeout)

    async def _openai_offer(self, http: aiohttp.ClientSession, sdp: str, timeout: float) -> dict[str, Any]:
        """POST /v1/realtime/calls: the SDP alone, or multipart with the GA session object."""
        url = f"{self.url}/v1/realtime/calls" + ("?parley_extensions=1" if self.extensions else "")
        body: Any
        if self.overrides:
            body = aiohttp.FormData()
            body.add_field("sdp", sdp, content_type="application/sdp")
            body.add_field("session", json.dumps(self.overrides), content_type="application/json")
        else:
            body = sdp
        headers = {} if self.overrides else {"Content-Type": "application/sdp"}
        async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            if r.status != 201:
                raise RuntimeError(f"call rejected ({r.status}): {text}")
            location = r.headers.get("Location", "")
        return {"sdp": text, "session_id": location.rsplit("/", 1)[-1], "location": location}

    async def _record(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                assert isinstance(frame, AudioFrame)
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].astype(np.float32) / 32768.0
                level = 20.0 * np.log10(max(float(np.sqrt(np.mean(pcm * pcm))), 1e-6))
                self.received.times.append(now)
                self.received.levels.append(level)
                self.received.pts.append(int(frame.pts or 0))
                if self.keep_audio:
                    self.received.chunks.append(pcm)
        except MediaStreamError:
            return

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def play(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> float:
        """Queue audio for real-time sending; returns its duration in seconds. Marks are in input samples."""
        scaled = {k: int(v * RATE / rate) for k, v in (marks or {}).items()}
        self.mic.enqueue(to_48k(samples, rate), scaled)
        return samples.size / rate

    async def play_and_wait(self, samples: np.ndarray, rate: int, marks: dict[str, int] | None = None) -> None:
        self.play(samples, rate, marks)
        while not self.mic.idle:  # noqa: ASYNC110 - the track drains on its own 20 ms clock
            await asyncio.sleep(0.01)

    def server_time(self, session_ms: float) -> float:
        """A server session timestamp (ms) on this machine's monotonic clock (same host only)."""
        if self.server_clock_origin is None:
            raise RuntimeError("the server did not announce its clock origin")
        return self.server_clock_origin + session_ms / 1000.0

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.mic.stop()
        await self.pc.close()
