"""Twilio Media Streams: a phone call carried over a WebSocket as JSON, into an ordinary Parley session.

    POST /telephony/twilio/twiml   TwiML that <Connect>s the call to the stream below (Twilio's voice webhook)
    GET  /telephony/twilio         the stream: Twilio sends connected, start, media, mark, dtmf, stop;
                                   Parley sends media, mark, clear

    caller ──µ-law 8 kHz, base64, 20 ms──▶ PhoneAudio (→ 16 kHz) ──▶ session.push_audio
    session.playout ──▶ one 20 ms frame per FrameClock tick ──µ-law──▶ media (silent frames are not sent)

Reply audio goes out in real time, so what was sent is what the caller heard, give or take Twilio's own buffer.
A `mark` follows every second of reply audio and the end of each stretch of it; Twilio echoes a mark once the
audio before it has played, so (echo time − send time) is the far end's playout lag. On barge-in the session
subtracts that lag (`unheard_ms`) from what the playout handed out before truncating the reply, and the `clear`
sent right after drops whatever Twilio still buffers. Marks Twilio returns because of a `clear` carry no timing
and are ignored.

Telnyx and several other providers speak the same JSON (their differences are noted in docs/TELEPHONY.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from aiohttp import WSCloseCode, WSMsgType, web

from realtime import events
from realtime.transports import g711, phone, twilio_signature
from realtime.transports.owned_tasks import OwnedTasks
from realtime.transports.rtp import DTMF_EVENTS

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.session import Session

log = logging.getLogger(__name__)

ROUTE = "/telephony/twilio"
TWIML_ROUTE = "/telephony/twilio/twiml"
MAX_PAYLOAD_BYTES = 1600  # 200 ms of µ-law; Twilio sends 160 (20 ms)
MAX_FRAME_BYTES = 64 * 1024
MARK_EVERY_MS = 1000
LAG_SMOOTHING = 0.3


class ProtocolError(Exception):
    """The peer broke the Media Streams protocol: the stream is closed with this WebSocket code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class StreamStats:
    media_in: int = 0
    media_out: int = 0
    marks_sent: int = 0
    marks_echoed: int = 0
    clears: int = 0
    unknown_events: dict[str, int] = field(default_factory=dict)


class TwilioCall:
    """One Media Streams WebSocket and the session behind it; `close()` releases both, whatever the cause."""

    kind = "twilio"
    sample_rate = g711.RATE

    def __init__(self, engine: Engine, ws: web.WebSocketResponse, directory: dict[str, Session]) -> None:
        self.engine = engine
        self.ws = ws
        self._directory = directory
        self.session: Session | None = None
        self.stream_sid = ""
        self.call_sid = ""
        self.stats = StreamStats()
        self._audio = phone.PhoneAudio("PCMU")
        self._clock = phone.FrameClock()
        self._send_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._tasks = OwnedTasks()
        self._pending_marks: dict[str, float] = {}  # name -> when the audio before it had all been sent
        self._cleared_marks: set[str] = set()
        self._mark_seq = 0
        self._lag_ms: float | None = None
        self._speaking = False
        self._stretch_ms = 0.0
        self._since_mark_ms = 0.0
        self._warned: set[str] = set()
        self._closed = False

    # --- TransportLink -------------------------------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        # Media Streams has no channel for Parley's events (the event tap has them); barge-in and errors matter.
        kind = event.get("type")
        if kind == "conversation.item.truncate":
            self._clear()
        elif kind == "error":
            log.warning("twilio stream %s: %s", self.stream_sid, event.get("error"))

    def unheard_ms(self) -> float:
        """Reply audio sent but not yet played by Twilio: the lag measured by marks, within the current stretch."""
        if self._lag_ms is None:
            return 0.0
        return min(self._lag_ms, self._stretch_ms)

    # --- the stream ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        reason = "hangup"
        timeout = self.engine.config.telephony.media_timeout_ms / 1000.0
        try:
            while True:
                wait = self.engine.config.server.ws_idle_timeout_s if self.session is None else timeout
                try:
                    msg = await self.ws.receive(timeout=wait)
                except TimeoutError:
                    what = "no start event" if self.session is None else "no media"
                    raise ProtocolError(WSCloseCode.POLICY_VIOLATION, f"{what} for {wait:.0f} s") from None
                if msg.type == WSMsgType.TEXT:
                    if self._handle(msg.data):
                        reason = "stop"
                        break
                elif msg.type == WSMsgType.BINARY:
                    raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA, "binary frames are not part of Media Streams")
                elif msg.type == WSMsgType.ERROR:
                    reason = "websocket_error"
                    break
                else:  # CLOSE, CLOSING, CLOSED: the peer went away
                    break
        except ProtocolError as exc:
            reason = "protocol_error"
            log.warning("twilio stream %s closed: %s", self.stream_sid or "(not started)", exc.reason)
            await self.ws.close(code=exc.code, message=exc.reason[:120].encode())
        except ConnectionError:
            reason = "connection_lost"
        finally:
            await self.close(reason)

    def _handle(self, text: str) -> bool:
        """One inbound message; True when the stream has ended (`stop`)."""
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "frame is not valid JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "a frame must be a JSON object with an 'event' string")
        kind = message["event"]
        if kind == "media":
            self._media(message)
        elif kind == "start":
            self._start(message)
        elif kind == "mark":
            self._mark_echoed(message)
        elif kind == "dtmf":
            self._dtmf(message)
        elif kind == "stop":
            return True
        elif kind != "connected":
            # A provider adding an event type must not drop live calls: log it, count it, carry on.
            self.stats.unknown_events[kind[:40]] = self.stats.unknown_events.get(kind[:40], 0) + 1
            self._warn_once(f"event:{kind[:40]}", "ignoring unknown Media Streams event %r", kind[:40])
        return False

    def _start(self, message: dict[str, Any]) -> None:
        if self.session is not None:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "a second 'start' on one stream")
        start = message.get("start")
        if not isinstance(start, dict):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "'start' needs a 'start' object")
        # Twilio writes camelCase; Telnyx sends the same events with snake_case fields and "PCMU".
        fmt = _first(start, "mediaFormat", "media_format") or {}
        if not isinstance(fmt, dict) or not _is_mulaw_8k(fmt):
            raise ProtocolError(WSCloseCode.UNSUPPORTED_DATA,
                                f"unsupported media format {fmt!r}; Parley takes audio/x-mulaw, 8000 Hz, mono")
        sid = _first(start, "streamSid", "stream_id") or _first(message, "streamSid", "stream_id")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "'start' has no streamSid")
        self.stream_sid = sid
        self.call_sid = str(_first(start, "callSid", "call_control_id") or "")
        params = _first(start, "customParameters", "custom_parameters")
        params = params if isinstance(params, dict) else {}
        number = str(params.get("to") or params.get("To") or start.get("to") or "")
        try:
            settings = phone.settings_for(self.engine, number)
            self.session = self.engine.open_session(self, settings)
        except Exception as exc:  # CapacityError above all; the caller's TwiML continues after <Connect>
            raise ProtocolError(WSCloseCode.TRY_AGAIN_LATER, f"no session: {exc}") from None
        for key in {self.stream_sid, self.call_sid} - {""}:
            self._directory[key] = self.session
        log.info("twilio stream %s (call %s, to %r) -> session %s", self.stream_sid, self.call_sid, number,
                 self.session.id)
        self.session.start()
        self._sender = asyncio.create_task(self._send_loop(), name=f"twilio-send-{self.stream_sid}")

    def _media(self, message: dict[str, Any]) -> None:
        if self.session is None:
            raise ProtocolError(WSCloseCode.POLICY_VIOLATION, "'media' before 'start'")
        media = message.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "'media' needs media.payload (base64 string)")
        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
            return  # a <Start><Stream track="both_tracks"> also sends what the caller hears: not input
        try:
            payload = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "media.payload is not valid base64") from None
        if not 0 < len(payload) <= MAX_PAYLOAD_BYTES:
            raise ProtocolError(
                WSCloseCode.INVALID_TEXT,
                f"media.payload of {len(payload)} bytes; expected 160 (20 ms of 8 kHz µ-law), 1..{MAX_PAYLOAD_BYTES}",
            )
        self.stats.media_in += 1
        self.session.push_audio(self._audio.decode(payload))

    def _dtmf(self, message: dict[str, Any]) -> None:
        dtmf = message.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or len(digit) != 1 or digit.upper() not in DTMF_EVENTS:
            self._warn_once("dtmf", "ignoring malformed dtmf event %r", str(dtmf)[:80])
            return
        if self.session is not None:
            self.session.notify(events.event("input_audio_buffer.dtmf", digit=digit.upper(), duration_ms=None,
                                             transport=self.kind))

    # --- outgoing --------------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self.session is not None
        playout = self.session.playout
        try:
            while not self._closed:
                await self._clock.tick()
                before = playout.speech_frames_out
                frame = playout.next_frame()
                if playout.speech_frames_out == before:
                    if self._speaking:
                        self._speaking = False
                        await self._send_mark()  # end of a stretch of reply audio
                    continue
                if not self._speaking:
                    self._speaking, self._stretch_ms, self._since_mark_ms = True, 0.0, 0.0
                payload = base64.b64encode(self._audio.encode(frame)).decode("ascii")
                await self._send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})
                self.stats.media_out += 1
                self._stretch_ms += phone.FRAME_MS
                self._since_mark_ms += phone.FRAME_MS
                if self._since_mark_ms >= MARK_EVERY_MS:
                    await self._send_mark()
        except ConnectionError:
            self._spawn(self.close("connection_lost"))
        except Exception:
            # A silent call is worse than a dropped one: the caller would wait for a reply that never comes.
            log.exception("twilio stream %s: sending failed", self.stream_sid)
            self._spawn(self.close("internal_error"))

    async def _send_mark(self) -> None:
        self._mark_seq += 1
        name = f"parley-{self._mark_seq}"
        self._pending_marks[name] = time.monotonic()
        self._since_mark_ms = 0.0
        self.stats.marks_sent += 1
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def _mark_echoed(self, message: dict[str, Any]) -> None:
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(WSCloseCode.INVALID_TEXT, "'mark' needs mark.name")
        sent = self._pending_marks.pop(name, None)
        if sent is None:
            self._cleared_marks.discard(name)  # returned by a clear (not played), or not ours
            return
        self.stats.marks_echoed += 1
        lag = (time.monotonic() - sent) * 1000.0
        self._lag_ms = lag if self._lag_ms is None else (1 - LAG_SMOOTHING) * self._lag_ms + LAG_SMOOTHING * lag

    def _clear(self) -> None:
        if self._closed or not self.stream_sid:
            return
        self._cleared_marks |= set(self._pending_marks)
        self._pending_marks.clear()
        self._speaking, self._stretch_ms = False, 0.0
        self.stats.clears += 1
        self._spawn(self._send_quietly({"event": "clear", "streamSid": self.stream_sid}))

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_str(json.dumps(message))

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except ConnectionError:
            pass

    # --- teardown --------------------------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sender is not None and self._sender is not asyncio.current_task():
            self._sender.cancel()
        self._tasks.cancel_all()
        for key in (self.stream_sid, self.call_sid):
            self._directory.pop(key, None)
        if self.session is not None:
            await self.engine.close_session(self.session, reason)
            log.info("twilio stream %s ended (%s): %s, far-end lag %s ms, late frames %d", self.stream_sid, reason,
                     self.stats, None if self._lag_ms is None else round(self._lag_ms),
                     self._clock.late_frames)
        if not self.ws.closed:
            await self.ws.close()

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("twilio stream %s: " + message, self.stream_sid, *args)


def _first(obj: dict[str, Any], *keys: str) -> Any:
    return next((obj[k] for k in keys if obj.get(k) not in (None, "")), None)


def _is_mulaw_8k(fmt: dict[str, Any]) -> bool:
    if not fmt:
        return True  # a start without a format: Media Streams has only ever meant µ-law at 8 kHz
    encoding = str(fmt.get("encoding", "audio/x-mulaw")).lower()
    rate = str(_first(fmt, "sampleRate", "sample_rate") or 8000)
    return encoding in ("audio/x-mulaw", "pcmu") and rate == "8000" and str(fmt.get("channels", 1)) == "1"


# --- HTTP ------------------------------------------------------------------------------------------------------


def twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """TwiML connecting the call to the stream; `parameters` come back in start.customParameters."""
    params = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items() if v)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect></Response>\n")


def _public_origin(request: web.Request) -> tuple[bool, str]:
    """(secure, host) as the client saw them: behind a TLS-terminating proxy the request arrives as plain http."""
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    return secure, request.headers.get("X-Forwarded-Host") or request.host


def stream_url(request: web.Request, configured: str) -> str:
    if configured:
        return configured
    secure, host = _public_origin(request)  # Twilio itself only connects to wss://
    return f"{'wss' if secure else 'ws'}://{host}{ROUTE}"


def webhook_url(request: web.Request, configured: str) -> str:
    """The URL Twilio requested, as it signed it: the configured public one, or rebuilt behind a TLS proxy."""
    if configured:
        return configured + (f"?{request.query_string}" if request.query_string else "")
    secure, host = _public_origin(request)
    return f"{'https' if secure else 'http'}://{host}{request.path_qs}"


def add_routes(app: web.Application, engine: Engine) -> None:
    directory = phone.directory(app)
    calls: set[TwilioCall] = set()

    async def stream(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        call = TwilioCall(engine, ws, directory)
        calls.add(call)
        try:
            await call.run()
        finally:
            calls.discard(call)
        return ws

    async def connect(request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        token = engine.config.telephony.twilio_auth_token
        if token:
            params = [(k, str(v)) for k, v in form.items()] if request.method == "POST" else []
            url = webhook_url(request, engine.config.telephony.twilio_webhook_url)
            if not twilio_signature.is_valid(token, url, params, request.headers.get("X-Twilio-Signature", "")):
                log.warning("Twilio webhook from %s refused: missing or wrong X-Twilio-Signature for %s",
                            request.remote, url)
                return web.json_response({"error": {"type": "invalid_signature", "message":
                                          "X-Twilio-Signature is missing or does not sign this request with "
                                          "[telephony].twilio_auth_token"}}, status=403)
        fields = {"to": str(form.get("To", "")), "from": str(form.get("From", "")),
                  "call_sid": str(form.get("CallSid", ""))}
        url = stream_url(request, engine.config.telephony.twilio_stream_url)
        return web.Response(text=twiml(url, fields), content_type="application/xml")

    async def shutdown(app: web.Application) -> None:
        for call in list(calls):
            await call.close("server_shutdown")

    app.router.add_get(ROUTE, stream)
    app.router.add_route("*", TWIML_ROUTE, connect)
    app.on_shutdown.append(shutdown)
