"""OpenAI Realtime (GA) compatibility, tested with the clients users already have.

The WebSocket tests use the official `openai` SDK with only `base_url` changed; the WebRTC test uses aiortc through
POST /v1/realtime/calls and the `oai-events` channel. Every server event is validated against the SDK's own
pydantic types (`RealtimeServerEvent`), strictly: a missing field or an unknown event type fails the test.
The server is the real embedded stack.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from benchmarks.client import ParleyCall
from benchmarks.server_process import healthz
from tests.conftest import silence, speak, words

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
QUESTION = "What is the capital of France?"


def pcm16(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def dbfs(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float32) / 32768.0
    return 20 * float(np.log10(max(float(np.sqrt(np.mean(x * x))), 1e-6)))


class Events:
    """Everything the server sent on one connection, each event validated by the SDK's types as it arrives."""

    def __init__(self, conn: AsyncRealtimeConnection) -> None:
        self.conn = conn
        self.log: list[tuple[float, dict[str, Any]]] = []

    async def next(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        event = json.loads(raw)
        SERVER_EVENT.validate_python(event)  # raises on anything the SDK could not parse strictly
        self.log.append((time.monotonic(), event))
        return event

    async def until(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if event["type"] == kind:
                return event
            assert event["type"] != "error", f"unexpected error: {event}"

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.log if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.log]

    def audio(self, response_id: str) -> np.ndarray:
        chunks = [np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in self.of("response.output_audio.delta")
                  if e["response_id"] == response_id]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@asynccontextmanager
async def realtime(url: str, **query: str) -> AsyncIterator[tuple[AsyncRealtimeConnection, Events]]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback")
    async with client.realtime.connect(model="parley-embedded", extra_query=query) as conn:
        events = Events(conn)
        created = await events.until("session.created", 20)
        assert created["session"]["type"] == "realtime"
        yield conn, events


async def test_official_sdk_holds_a_spoken_turn(embedded_server: str) -> None:
    async with realtime(embedded_server) as (conn, events):
        await conn.session.update(session={
            "type": "realtime",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "whisper-1"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}}},
        })
        updated = await events.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
        audio, rate = speak(QUESTION)
        assert rate == 24000
        clip = np.concatenate([silence(300), audio, silence(1500)])
        for i in range(0, clip.size, 2400):  # 100 ms appends, as fast as the socket takes them
            await conn.input_audio_buffer.append(audio=pcm16(clip[i : i + 2400]))
        done = await events.until("response.done", 60)
        # The SDK's typed view of the same events.
        typed = conn.parse_event(json.dumps(done))
        assert typed.type == "response.done" and typed.response.status == "completed"

    types = events.types()
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                 "conversation.item.input_audio_transcription.completed", "response.created",
                 "response.output_item.added", "response.content_part.added", "response.output_audio.delta",
                 "response.output_audio_transcript.delta", "response.output_audio.done",
                 "response.output_audio_transcript.done", "response.content_part.done", "response.output_item.done"):
        assert kind in types, f"no {kind} in {sorted(set(types))}"
    assert types.index("input_audio_buffer.committed") < types.index("response.created") < types.index("response.done")
    assert not [t for t in types if t.startswith("parley.")], "extension events need the opt-in"
    heard = events.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert {"capital", "france"} <= set(words(heard)), heard
    response = done["response"]
    reply = events.audio(response["id"])
    assert reply.size / 24000 > 0.5 and dbfs(reply) > -35, "the reply is pcm16 24 kHz speech, not silence"
    transcript = events.of("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript.strip() and response["output"][0]["content"][0]["transcript"] == transcript
    assert response["usage"]["output_tokens"] > 0 and response["usage"]["input_tokens"] > 0


async def test_manual_turn_commit_and_response_create(embedded_server: str) -> None:
    async with realtime(embedded_server) as (conn, events):
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None, "transcription": {"model": "whisper-1"}}}})
        updated = await events.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        audio, _ = speak(QUESTION)
        await conn.input_audio_buffer.append(audio=pcm16(audio))
        await conn.input_audio_buffer.commit()
        committed = await events.until("input_audio_buffer.committed")
        await conn.response.create()
        done = await events.until("response.done", 60)
    assert done["response"]["status"] == "completed"
    assert "input_audio_buffer.speech_started" not in events.types(), "no VAD turns with turn_detection null"
    transcribed = events.of("conversation.item.input_audio_transcription.completed")[0]
    assert transcribed["item_id"] == committed["item_id"]
    assert {"capital", "france"} <= set(words(transcribed["transcript"]))
    assert dbfs(events.audio(done["response"]["id"])) > -35


async def test_response_cancel_mid_reply_stops_the_audio(embedded_server: str) -> None:
    async with realtime(embedded_server) as (conn, events):
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Tell me a long story about a dragon and a knight."}]})
        added = await events.until("conversation.item.added")
        assert added["item"]["role"] == "user"
        await conn.response.create()
        first = await events.until("response.output_audio.delta", 60)
        await conn.response.cancel()
        done = await events.until("response.done", 10)
        assert done["response"]["id"] == first["response_id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        cancelled_at = len(events.log)
        # Nothing of that response follows its response.done.
        with pytest.raises(asyncio.TimeoutError):
            while True:
                event = await events.next(1.5)
                assert event.get("response_id") != first["response_id"], event
        # The session goes on: the next response is answered normally.
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is two plus two?"}]})
        await conn.response.create()
        again = await events.until("response.done", 60)
        assert again["response"]["status"] == "completed"
    later = [e for _, e in events.log[cancelled_at:] if e["type"] == "response.output_audio.delta"]
    assert all(e["response_id"] != first["response_id"] for e in later)


async def test_bad_client_events_get_errors_naming_them_and_the_session_survives(embedded_server: str) -> None:
    async with realtime(embedded_server) as (conn, events):
        ws = conn._connection  # the SDK only sends well-formed JSON; a broken client does not
        await ws.send("{not json")
        assert (await events.until("error"))["error"]["code"] == "invalid_json"
        probes: list[tuple[dict[str, Any], str]] = [
            ({"type": "no.such.event"}, "unknown_event_type"),
            ({"type": "session.update", "session": {"type": "realtime", "voice_of_god": True}}, "unknown_parameter"),
            ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}},
             "unsupported"),
            ({"type": "input_audio_buffer.append", "audio": "***"}, "invalid_value"),
            ({"type": "input_audio_buffer.commit"}, "unsupported"),  # server_vad commits by itself
            ({"type": "response.cancel"}, "response_cancel_not_active"),
            ({"type": "conversation.item.retrieve", "item_id": "item_nope"}, "item_not_found"),
            ({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c",
                                                            "output": "{}"}}, "invalid_call_id"),
        ]
        for i, (probe, code) in enumerate(probes):
            await ws.send(json.dumps({**probe, "event_id": f"bad_{i}"}))
            error = (await asyncio.wait_for(_next_of(events, "error"), 10))["error"]
            assert (error["code"], error["event_id"]) == (code, f"bad_{i}"), error
        await conn.session.update(session={"type": "realtime", "instructions": "Answer in one word."})
        updated = await events.until("session.updated")
        assert updated["session"]["instructions"] == "Answer in one word."
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Say hello."}]})
        item = (await events.until("conversation.item.done"))["item"]
        await conn.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        assert (await events.until("conversation.item.retrieved"))["item"]["id"] == item["id"]
        await conn.conversation.item.delete(item_id=item["id"])
        assert (await events.until("conversation.item.deleted"))["item_id"] == item["id"]
    # The client went away: its session and everything it held are released.
    deadline = time.monotonic() + 10
    while (health := await asyncio.to_thread(healthz, embedded_server))["sessions"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert health["sessions"] == 0, health


async def _next_of(events: Events, kind: str) -> dict[str, Any]:
    while (event := await events.next(10))["type"] != kind:
        pass
    return event


async def test_parley_extensions_only_for_a_client_that_opts_in(embedded_server: str) -> None:
    async with realtime(embedded_server, parley_extensions="1") as (conn, events):
        audio, _ = speak(QUESTION)
        clip = np.concatenate([audio, silence(1500)])
        await conn.input_audio_buffer.append(audio=pcm16(clip))
        done = await _next_of_raw(events, "response.done")
    types = [e["type"] for _, e in events.log]
    assert "parley.speculation.started" in types
    assert "parley.speculation.committed" in types or "parley.speculation.discarded" in types
    assert done["response"]["parley_metrics"]["speech_end_to_first_audio_ms"] > 0


async def _next_of_raw(events: Events, kind: str) -> dict[str, Any]:
    """Like Events.until, for connections that also carry `parley.*` events (not in the SDK's union)."""
    deadline = time.monotonic() + 60
    while True:
        raw = await asyncio.wait_for(events.conn.recv_bytes(), max(0.1, deadline - time.monotonic()))
        event = json.loads(raw)
        if not event["type"].startswith("parley."):
            SERVER_EVENT.validate_python(event)
        events.log.append((time.monotonic(), event))
        if event["type"] == kind:
            return event


async def test_webrtc_calls_flow_with_oai_events(embedded_server: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{embedded_server}/v1/realtime/calls", data="not sdp",
                             headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    call = ParleyCall(embedded_server, openai=True, session={
        "type": "realtime", "instructions": "You are a helpful voice assistant. Answer in one short sentence.",
        "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
    try:
        await call.connect()
        created = call.of_type("session.created")[0]
        assert created["session"]["instructions"].startswith("You are a helpful voice assistant")
        audio, rate = speak(QUESTION)
        await call.play_and_wait(np.concatenate([audio, silence(1200)]), rate)
        done = await call.wait_for("response.done", timeout=60)
        t_done = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        await call.close()
    for _, event in call.events:
        SERVER_EVENT.validate_python(event)
    assert done["response"]["status"] == "completed"
    heard = call.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert {"capital", "france"} <= set(words(heard))
    assert not call.of_type("response.output_audio.delta"), "on WebRTC the audio rides the media track"
    assert call.received.speech_ms_between(t_done - 30, t_done + 0.5) > 500, "the reply was heard on the track"


async def test_the_readme_example_runs_as_written(embedded_server: str) -> None:
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## OpenAI Realtime compatibility"):]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    code = example.group(1).replace("http://127.0.0.1:8080", embedded_server)
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
                                     timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(words(result.stdout)) >= 1, "the example prints the spoken reply's transcript"


async def test_a_client_run_tool_round_trip(embedded_server: str) -> None:
    tool = {"type": "function", "name": "get_order_status",
            "description": "Look up the delivery status of a customer's order by its number.",
            "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                           "required": ["order_number"]}}
    async with realtime(embedded_server) as (conn, events):
        update: Any = {"type": "realtime", "tools": [tool], "tool_choice": "auto", "parley": {"temperature": 0.0}}
        await conn.session.update(session=update)
        assert (await events.until("session.updated"))["session"]["tools"][0]["name"] == "get_order_status"
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is the status of my order number 4512?"}]})
        await conn.response.create()
        call = await events.until("response.function_call_arguments.done", 60)
        assert call["name"] == "get_order_status" and "4512" in json.loads(call["arguments"])["order_number"]
        done = await events.until("response.done", 30)
        assert done["response"]["status"] == "completed"
        assert [o["type"] for o in done["response"]["output"]][-1] == "function_call"
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call["call_id"],
                                                  "output": json.dumps({"status": "shipped", "arrives": "Friday"})})
        await conn.response.create()
        answer = await events.until("response.done", 60)
    assert answer["response"]["status"] == "completed"
    said = answer["response"]["output"][0]["content"][0]["transcript"]
    assert {"shipped", "friday"} & set(words(said)), said


async def test_g711_formats_in_and_out(embedded_server: str) -> None:
    from realtime.audio import resample
    from realtime.transports import g711

    async with realtime(embedded_server) as (conn, events):
        update: Any = {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
            "output": {"format": {"type": "audio/pcma"}}}}
        await conn.session.update(session=update)
        updated = (await events.until("session.updated"))["session"]["audio"]
        assert (updated["input"]["format"]["type"], updated["output"]["format"]["type"]) == ("audio/pcmu", "audio/pcma")
        audio, rate = speak(QUESTION)
        phone = resample(np.concatenate([audio, silence(1500)]), rate, 8000)
        for i in range(0, phone.size, 1600):  # 200 ms of µ-law per append
            chunk = g711.encode(phone[i : i + 1600], "PCMU")
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        done = await events.until("response.done", 60)
    assert done["response"]["status"] == "completed"
    heard = events.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert {"capital", "france"} <= set(words(heard)), heard
    deltas = [base64.b64decode(e["delta"]) for e in events.of("response.output_audio.delta")]
    assert deltas and max(len(d) for d in deltas) <= 168, "about 20 ms of A-law at 8 kHz per delta"
    reply = g711.decode(b"".join(deltas), "PCMA")
    assert reply.size / 8000 > 0.5 and dbfs(reply) > -35


async def test_past_capacity_the_websocket_is_refused_before_the_upgrade(tmp_path: Any) -> None:
    from tests.conftest import run_server

    config = "[server]\nmax_sessions = 1\nrate_limit_per_minute = 0\n\n[models]\nstack = \"echo\"\n"
    with run_server(tmp_path, config, ready_timeout=90) as url:
        async with realtime(url):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/v1/realtime?model=x", headers={
                        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}) as r:
                    assert r.status == 503 and r.headers["Retry-After"]
                    assert (await r.json())["error"]["type"] == "capacity"
        # The first call ended: the next is taken.
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(healthz, url))["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        async with realtime(url):
            pass
