"""Twilio Media Streams: a WebSocket caller that behaves like Twilio drives /telephony/twilio with real speech.

The embedded stack holds a full turn (speech in, transcript, reply audio out as µ-law media), marks come back as
the simulated phone plays the reply, speaking over the reply makes Parley send `clear`, and key presses reach
the event tap. On the cheap echo stack, every kind of broken stream is closed with a clear WebSocket code while
the server keeps serving, and no session leaks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import numpy as np
import pytest

from benchmarks.twilio_client import TwilioCall
from tests.conftest import healthz, run_server, silence, speak, words

NUMBER = "+1 555 0100"
EMBEDDED = """
[server]
max_sessions = 4
[telephony]
twilio = true
[[telephony.numbers]]
number = "+15550100"
# The silence rule, and speech over a reply is always a barge-in (the test talks over it 0.6 s in, which
# resume_window_ms would take for the caller going on with the question).
session = { end_of_turn_ms = 800, turn_detection = "silence", resume_window_ms = 0 }
"""
ECHO = """
[server]
max_sessions = 1
[models]
stack = "echo"
[telephony]
twilio = true
media_timeout_ms = 3000
"""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory):
    with run_server(tmp_path_factory.mktemp("twilio"), EMBEDDED) as url:
        yield url


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory):
    with run_server(tmp_path_factory.mktemp("twilio-echo"), ECHO) as url:
        yield url


async def sessions_drop_to_zero(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (live := healthz(url)["sessions"]) != 0:
        assert time.monotonic() < deadline, f"{live} sessions still open"
        await asyncio.sleep(0.1)


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_phone_call_holds_a_turn_and_barge_in_clears_twilio(embedded: str) -> None:
    call = TwilioCall(embedded, to=NUMBER)
    await call.connect()
    try:
        question, rate = speak("What is the capital of France?")
        call.play(np.concatenate([question, silence(200)]), rate, marks={"end": question.size})
        done = await call.wait_for("response.done", timeout=90)
        assert done["response"]["status"] == "completed", done
        heard = call.of_type("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
        assert {"capital", "france"} <= set(words(heard)), heard

        # The same metrics as a WebRTC call, with the per-number settings of the dialled number applied.
        metrics = done["response"]["metrics"]
        assert metrics["speech_end_to_first_audio_ms"] is not None and metrics["speech_end_to_first_audio_ms"] > 0
        assert metrics["end_of_turn_ms"] == 800

        # The reply reached the phone as µ-law media, and it is speech-loud, after the question ended.
        onset = call.received.onset_after(call.mark_times["end"])
        assert onset is not None, "no reply audio reached the phone"
        assert call.received.speech_ms_between(onset, time.monotonic()) > 500
        latency_ms = (onset - call.mark_times["end"]) * 1000
        print(f"twilio: caller speech end -> first reply audio {latency_ms:.0f} ms")
        assert latency_ms < 30000  # a sanity bound only: this 2-core machine is shared
        # Marks followed the reply, and the phone echoed them once it had played the audio before them.
        marks = [m["mark"]["name"] for _, m in call.sent("mark")]
        assert marks, "Parley sent no mark after the reply"
        await asyncio.sleep(0.5)
        assert set(marks) <= set(call.echoed_marks)

        # Barge-in: ask for something long, talk over the reply, and Parley clears Twilio's buffer.
        story, _ = speak("Tell me a long story about a brave knight and a dragon.")
        asked = time.monotonic()
        call.play(np.concatenate([story, silence(200)]), rate, marks={"story_end": story.size})
        await call.wait_for("response.created", after=asked, timeout=60)
        await until(lambda: call.received.onset_after(call.mark_times.get("story_end", 1e12)), 60)
        await asyncio.sleep(0.6)  # let the caller hear part of the reply
        interrupt, _ = speak("Stop, wait a moment please, I have another question.")
        interrupted = time.monotonic()
        call.play(np.concatenate([interrupt, silence(200)]), rate)
        cancelled = await call.wait_for("response.done", after=asked, timeout=30,
                                        where=lambda e: e["response"]["status"] == "cancelled")
        truncate = await call.wait_for("conversation.item.truncate", after=asked, timeout=5)
        # The clear comes on the media stream, the truncate on the event tap: two sockets, either may be first.
        clears = await until(lambda: [t for t, _ in call.sent("clear") if t >= interrupted] or None, 3)
        assert clears[0] - interrupted < 3.0
        # After the clear, the cancelled reply's audio stopped (the caller is still talking: no new reply yet).
        assert not [t for t, _ in call.sent("media") if clears[0] + 0.1 < t < clears[0] + 0.5]
        # Truncation: at most what reached the phone before the clear, less the lag its marks showed.
        heard_ms = truncate["audio_end_ms"]
        got_ms = 20 * len([t for t, _ in call.sent("media") if asked < t < clears[0]])
        print(f"twilio barge-in: clear {1000 * (clears[0] - interrupted):.0f} ms after the caller spoke; "
              f"truncated at {heard_ms} ms of {got_ms} ms the phone received")
        assert 300 <= heard_ms <= got_ms
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"

        # A key press on the phone reaches the event tap.
        await call.dtmf("5")
        dtmf = await call.wait_for("input_audio_buffer.dtmf", timeout=5)
        assert dtmf["digit"] == "5" and dtmf["transport"] == "twilio"
    finally:
        await call.close()
    await sessions_drop_to_zero(embedded)


async def until(probe, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return value


# --- bad input on the echo stack ---------------------------------------------------------------------------------


def start_message(sid: str = "MZtest", **format_overrides: object) -> str:
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **format_overrides}
    return json.dumps({"event": "start", "streamSid": sid,
                       "start": {"streamSid": sid, "callSid": "CA" + sid, "mediaFormat": fmt}})


def media_message(payload: str, sid: str = "MZtest") -> str:
    return json.dumps({"event": "media", "streamSid": sid, "media": {"track": "inbound", "payload": payload}})


SILENT = base64.b64encode(b"\xff" * 160).decode()
BROKEN = [
    ("not json", ["{not json"], aiohttp.WSCloseCode.INVALID_TEXT),
    ("no event", ['{"streamSid": "x"}'], aiohttp.WSCloseCode.INVALID_TEXT),
    ("media before start", [media_message(SILENT)], aiohttp.WSCloseCode.POLICY_VIOLATION),
    ("base64 garbage", [start_message(), media_message("%%%not-base64%%%")], aiohttp.WSCloseCode.INVALID_TEXT),
    ("empty payload", [start_message(), media_message("")], aiohttp.WSCloseCode.INVALID_TEXT),
    ("oversized payload", [start_message(), media_message(base64.b64encode(b"\xff" * 4000).decode())],
     aiohttp.WSCloseCode.INVALID_TEXT),
    ("linear PCM offered", [start_message(encoding="audio/l16", sampleRate=16000)],
     aiohttp.WSCloseCode.UNSUPPORTED_DATA),
    ("second start", [start_message(), start_message()], aiohttp.WSCloseCode.POLICY_VIOLATION),
]


@pytest.mark.parametrize(("frames", "code"), [(f, c) for _, f, c in BROKEN], ids=[n for n, _, _ in BROKEN])
async def test_broken_streams_are_closed_with_a_clear_code(echo: str, frames: list[str], code: int) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{echo}/telephony/twilio") as ws:
        for frame in frames:
            await ws.send_str(frame)
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert ws.close_code == code, (ws.close_code, msg.extra)
        assert msg.extra, "the close carries no reason"
    await sessions_drop_to_zero(echo)


async def test_a_telnyx_style_stream_is_taken_too(echo: str) -> None:
    """Telnyx sends the same events with snake_case fields and names the codec PCMU."""
    start = {"event": "start", "sequence_number": "1", "stream_id": "telnyx-1",
             "start": {"call_control_id": "v3:telnyx-call", "media_format": {"encoding": "PCMU", "sample_rate": 8000,
                                                                             "channels": 1}}}
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{echo}/telephony/twilio") as ws:
        await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send_str(json.dumps(start))
        await asyncio.sleep(0.3)
        async with http.get(f"{echo}/telephony/calls/v3:telnyx-call") as r:
            assert r.status == 200 and (await r.json())["transport"] == "twilio"
        await ws.send_str(json.dumps({"event": "stop", "sequence_number": "2", "stream_id": "telnyx-1"}))
        await ws.receive(timeout=5)
        assert ws.close_code == aiohttp.WSCloseCode.OK
    await sessions_drop_to_zero(echo)


async def test_binary_frames_and_silence_timeouts_end_the_stream(echo: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{echo}/telephony/twilio") as ws:
            await ws.send_str(start_message())
            await ws.send_bytes(b"\x00\x01")
            await ws.receive(timeout=10)
            assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
        async with http.ws_connect(f"{echo}/telephony/twilio") as ws:
            await ws.send_str(start_message())  # then nothing: the caller vanished without a stop
            msg = await ws.receive(timeout=10)
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION and "no media" in msg.extra
    await sessions_drop_to_zero(echo)


async def test_unknown_events_are_ignored_and_the_call_goes_on(echo: str) -> None:
    call = TwilioCall(echo)
    await call.connect()
    try:
        await call.send({"event": "transcription", "streamSid": call.stream_sid, "text": "hello"})
        await call.send({"event": "dtmf", "streamSid": call.stream_sid, "dtmf": {"digit": "not a digit"}})
        question, rate = speak("Hello there, can you hear me?")
        call.play(np.concatenate([question, silence(300)]), rate, marks={"end": question.size})
        done = await call.wait_for("response.done", timeout=30)
        assert done["response"]["status"] == "completed"
        assert await until(lambda: call.received.onset_after(call.mark_times["end"]), 10)
        assert call.close_code is None
    finally:
        await call.close()
    await sessions_drop_to_zero(echo)


async def test_a_call_beyond_capacity_is_refused_and_the_first_goes_on(echo: str) -> None:
    first = TwilioCall(echo)
    await first.connect()
    second = TwilioCall(echo)
    try:
        with pytest.raises(RuntimeError, match="1013"):
            await second.connect(timeout=5)
        question, rate = speak("Are you still there?")
        first.play(np.concatenate([question, silence(300)]), rate)
        done = await first.wait_for("response.done", timeout=30)
        assert done["response"]["status"] == "completed"
    finally:
        await second.close(stop=False)
        await first.close()
    await sessions_drop_to_zero(echo)


async def test_twiml_points_the_call_at_the_stream(echo: str) -> None:
    async with aiohttp.ClientSession() as http:
        form = {"To": "+15550100", "From": "+15559999", "CallSid": "CA123"}
        async with http.post(f"{echo}/telephony/twilio/twiml", data=form) as r:
            assert r.status == 200 and r.content_type == "application/xml"
            body = await r.text()
    host = echo.removeprefix("http://")
    assert f'<Stream url="ws://{host}/telephony/twilio">' in body
    assert '<Parameter name="to" value="+15550100"/>' in body and "<Connect>" in body
