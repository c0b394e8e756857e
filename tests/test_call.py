"""A real WebRTC call over loopback answered by the real embedded stack (Silero, Whisper, Qwen, hibari)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from benchmarks.client import ParleyCall
from realtime.events import SERVER_EVENTS
from tests.conftest import librivox, silence, speak, word_error_rate

pytestmark = [pytest.mark.models, pytest.mark.timeout(180)]

# Deterministic replies: greedy decoding.
GREEDY = {"temperature": 0.0}


async def one_turn(call: ParleyCall, audio: np.ndarray, rate: int) -> tuple[float, dict]:
    """Play one utterance, wait for the reply to finish; returns (speech end time, response.done).

    A reply cancelled on the way is not the answer: the semantic end of turn may answer a synthesized sentence at
    a pause inside it, and false-end recovery then drops that reply and answers the whole sentence."""
    start = time.monotonic()
    call.play(np.concatenate([silence(300, rate), audio]), rate, marks={"end": int(rate * 0.3) + audio.size})
    done = await call.wait_for("response.done", timeout=60, after=start,
                               where=lambda e: e["response"].get("status") != "cancelled")
    return call.mic.mark_times["end"], done


def reply_speech_ms(call: ParleyCall, after: float) -> float:
    return call.received.speech_ms_between(after, time.monotonic() + 1)


async def test_spoken_question_gets_a_relevant_spoken_answer(embedded_server: str) -> None:
    call = ParleyCall(embedded_server, session=GREEDY)
    await call.connect()
    try:
        audio, rate = speak("What is the capital of France?")
        end, done = await one_turn(call, audio, rate)
        await asyncio.sleep(0.3)
        transcript = call.of_type("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
        assert word_error_rate("What is the capital of France?", transcript) == 0.0, transcript
        response = done["response"]
        assert response["status"] == "completed"
        assert "paris" in response["output_text"].lower(), response["output_text"]
        deltas = "".join(e["delta"] for e in call.of_type("response.audio_transcript.delta"))
        assert deltas.strip() == response["output_text"]
        # The reply came back as audio on the same connection: speech energy, starting after the question ended.
        onset = call.received.onset_after(end)
        assert onset is not None and reply_speech_ms(call, end) > 500
        # Audio flowed every 20 ms throughout, models running or not (generous bound for a shared 2-core box).
        frames, late = call.received.gaps(call.received.times[0], call.received.times[-1], late_ms=100)
        assert frames > 100 and late <= frames * 0.02, (frames, late)
        metrics = response["metrics"]
        for key in ("speech_end_ms", "lm_first_token_ms", "first_audio_out_ms"):
            assert isinstance(metrics[key], float), key
        assert metrics["speech_end_ms"] < metrics["lm_first_token_ms"] < metrics["first_audio_out_ms"]
    finally:
        await call.close()


async def test_human_read_speech_is_transcribed_and_events_come_in_order(embedded_server: str) -> None:
    audio, rate, reference = librivox("0880")  # "he was not an ill disposed young man"
    call = ParleyCall(embedded_server, session=GREEDY)
    await call.connect()
    try:
        await one_turn(call, audio, rate)
        await asyncio.sleep(0.3)
        types = [e["type"] for _, e in call.events]
        assert set(types) <= set(SERVER_EVENTS), set(types) - set(SERVER_EVENTS)
        transcript = call.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
        assert word_error_rate(reference, transcript) <= 0.15, transcript

        def index(kind: str) -> int:
            return types.index(kind)

        assert types[0] == "session.created"
        assert (index("input_audio_buffer.speech_started") < index("input_audio_buffer.speech_stopped")
                < index("response.created") < index("response.audio_transcript.delta") < index("response.done"))
        assert index("conversation.item.input_audio_transcription.completed") < index("response.done")
        if "speculation.started" in types:
            assert index("input_audio_buffer.speech_stopped") < index("speculation.started") < index("response.done")
        assert types.count("response.done") == 1
    finally:
        await call.close()


async def test_two_turns_keep_context_and_session_update_applies(embedded_server: str) -> None:
    # end_of_turn_ms is long here so that however slow this machine, the draft's reading of the words is in
    # before the silence rule would end the turn.
    call = ParleyCall(embedded_server, session={**GREEDY, "tools": False, "end_of_turn_ms": 3000})
    await call.connect()
    try:
        # The default decides by meaning: Smart Turn scores the pause after a finished sentence and the draft's LM
        # reads the words as finished, so the turn is answered after a short silence instead of end_of_turn_ms.
        audio, rate = speak("My name is Alice.")
        _, first = await one_turn(call, audio, rate)
        scored = call.of_type("turn.scored")
        assert scored and scored[-1]["probability"] >= 0.7, scored
        assert scored[-1]["transcript_probability"] > 0.05 and scored[-1]["audio_probability"] >= 0.5, scored
        metrics = first["response"]["metrics"]
        assert metrics["end_of_turn_probability"] >= 0.5 and metrics["end_of_turn_ms"] == 300, metrics
        assert metrics["end_of_turn_transcript_probability"] > 0.05, metrics
        call.send({"type": "session.update",
                   "session": {"turn_detection": "silence", "end_of_turn_ms": 600, "speed": 1.2}})
        updated = await call.wait_for("session.updated", timeout=5)
        assert updated["session"]["settings"]["end_of_turn_ms"] == 600
        call.send({"type": "session.update", "session": {"end_of_turn_ms": "soon"}})
        err = await call.wait_for("error", timeout=5)
        assert "[session].end_of_turn_ms" in err["error"]["message"]
        audio, rate = speak("What is my name?")
        _, done = await one_turn(call, audio, rate)
        assert "alice" in done["response"]["output_text"].lower(), done["response"]["output_text"]
        assert done["response"]["metrics"]["end_of_turn_ms"] == 600
    finally:
        await call.close()


async def test_the_lm_calls_a_tool_and_speaks_its_result(embedded_server: str) -> None:
    call = ParleyCall(embedded_server, session=GREEDY)
    await call.connect()
    try:
        audio, rate = speak("What is seventeen times twenty three?")
        _, done = await one_turn(call, audio, rate)
        started = call.of_type("response.function_call.started")
        completed = call.of_type("response.function_call.completed")
        assert started and started[0]["name"] == "calculate", [e["type"] for _, e in call.events]
        assert '"result": 391' in completed[0]["output"]
        assert "391" in done["response"]["output_text"].replace(",", ""), done["response"]["output_text"]
        assert "{" not in done["response"]["output_text"], "tool-call JSON must never be spoken"
        # An ordinary request in the same call is answered in words: no tool call, and no talk about tools
        # (a small model shown tools it may not call explains them to the user instead).
        audio, rate = speak("I'm planning a trip to Lisbon in the spring.")
        _, done = await one_turn(call, audio, rate)
        text = done["response"]["output_text"]
        assert len(call.of_type("response.function_call.started")) == 1, text
        assert text.strip() and not any(w in text.lower() for w in ("function", "tool", "json", "`", "{")), text
    finally:
        await call.close()


async def test_receive_only_offer_still_gets_reply_audio_track(embedded_server: str) -> None:
    """A caller without a microphone (listen-only) still gets the outgoing track on the same connection."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from realtime.config import IceConfig
    from realtime.transports import ice

    ice.install(IceConfig())
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("events")
    got_track = asyncio.Event()
    frames = []
    readers = []

    @pc.on("track")
    def on_track(track):  # type: ignore[no-untyped-def]
        async def read() -> None:
            for _ in range(10):
                frames.append(await track.recv())
            got_track.set()

        readers.append(asyncio.ensure_future(read()))

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{embedded_server}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
            assert r.status == 200
            answer = await r.json()
    assert "a=sendonly" in answer["sdp"] or "a=sendrecv" in answer["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await asyncio.wait_for(got_track.wait(), 20)
    assert len(frames) == 10  # paced silence flows even with nothing to say
    await pc.close()


async def test_a_caller_who_goes_on_right_after_the_reply_starts_is_heard_as_one_turn(embedded_server: str) -> None:
    # The silence rule at 500 ms answers the hesitation; the caller goes on 1.2 s into it, i.e. ~0.6 s after the
    # commit: the reply is dropped and both parts are transcribed as one user turn.
    call = ParleyCall(embedded_server, session={**GREEDY, "tools": False, "turn_detection": "silence",
                                                "end_of_turn_ms": 500, "speculate_after_ms": 200})
    await call.connect()
    try:
        first, rate = speak("Please remind me to call my sister.")
        second, _ = speak("Tomorrow morning at nine.")
        audio = np.concatenate([silence(300, rate), first, silence(1200, rate), second])
        start = time.monotonic()
        call.play(audio, rate)
        resumed = await call.wait_for("turn.resumed", timeout=30, after=start)
        cancelled = await call.wait_for("response.done", timeout=10, after=start)
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_resumed"
        assert resumed["after_commit_ms"] <= 1000
        deleted = {e["item_id"] for e in call.of_type("conversation.item.deleted")}
        assert {resumed["merged_item_id"], cancelled["response"]["item_id"]} <= deleted
        # The merged turn's reply (not the dropped one, which may have arrived this very millisecond).
        done = await call.wait_for("response.done", timeout=60, after=start,
                                   where=lambda e: e["response"]["id"] != cancelled["response"]["id"])
        assert done["response"]["status"] == "completed"
        merged = [e for e in call.of_type("conversation.item.input_audio_transcription.completed")
                  if e["item_id"] == resumed["item_id"]]
        assert merged, "the merged turn was transcribed"
        heard = merged[-1]["transcript"].lower()
        assert "sister" in heard and "tomorrow" in heard, heard
    finally:
        await call.close()
