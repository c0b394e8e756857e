"""Acceptance: a real WebRTC call to Parley switched to the OpenAI-compatible backend by config alone.

Parley runs as `server.py` with `[models] stack = "openai"` pointing at a real `python -m llama_cpp.server`
(the embedded Qwen GGUF) on loopback; the caller is `benchmarks.client.ParleyCall` speaking hibari-tts speech.
The conversation exercises what the backend must keep working:
- a mid-utterance pause of ~450 ms (between speculate_after_ms = 200 and end_of_turn_ms = 700) starts a draft
  that is discarded when speech resumes, and the end of the turn commits a draft;
- a pause that lasts until a draft's LM request is streaming, then more speech: the draft is cancelled by
  closing its HTTP stream, which the LM server logs as a client disconnect;
- barge-in: speaking over the reply stops it (`response.done` cancelled, reason turn_detected).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.client import ParleyCall
from tests.conftest import run_server, silence, speak
from tests.test_openai_backend import llama_server

pytestmark = [pytest.mark.slow, pytest.mark.models]
RATE = 24000


def config(base_url: str) -> str:
    return f"""
[server]
max_sessions = 2

[session]
speculate_after_ms = 200
end_of_turn_ms = 700
speculation = true
barge_in_ms = 300
max_response_tokens = 60
tools = false

[models]
stack = "openai"

[models.embedded]
asr = "whisper-base"

[models.openai]
base_url = "{base_url}"
read_timeout_s = 60.0
"""


def timeline(call: ParleyCall, after: float) -> list[tuple[float, str, Any]]:
    """Events since `after` with their offsets, for failure messages."""
    def detail(e: dict[str, Any]) -> Any:
        return e.get("reason") or e.get("transcript") or e.get("response", {}).get("status")

    return [(round(t - after, 2), e["type"], detail(e)) for t, e in call.events if t >= after]


async def wait_audio_onset(call: ParleyCall, after: float, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        onset = call.received.onset_after(after)
        if onset is not None:
            return onset
        await asyncio.sleep(0.02)
    raise TimeoutError("no reply audio")


@pytest.mark.timeout(600)
async def test_conversation_with_speculation_and_barge_in(tmp_path: Path) -> None:
    log = tmp_path / "llama.log"
    # Synthesize before the call: a blocking synthesis on the event loop would stall the microphone track, which
    # then catches up in a burst and squeezes the pauses the test is about.
    capital, france = speak("What is the capital")[0], speak("of France?")[0]
    # Not a counting request: Whisper tends to loop on strings of numbers, which makes its passes slow.
    roman, detail = speak("Tell me about the history of the Roman empire.")[0], speak("In detail, please.")[0]
    story, stop = speak("Tell me a story about a brave little dragon.")[0], speak("Wait, stop, stop please.")[0]
    # One llama.cpp thread: the second core is Parley's (Whisper, Opus, the event loop) and the test client's.
    with llama_server(log, threads=1) as base, run_server(tmp_path, config(base)) as url:
        # The silence rule: the scripted 450 ms pause must start a draft and be discarded, whatever Smart Turn makes
        # of synthesized "What is the capital" (a falling pitch it takes for a finished turn).
        call = ParleyCall(url, session={"temperature": 0.0, "turn_detection": "silence"})
        await call.connect()
        await asyncio.sleep(0.5)
        try:
            # 1. "What is the capital <450 ms> of France?": a draft discarded mid-pause, one committed at the end.
            t1 = time.monotonic()
            await call.play_and_wait(np.concatenate([silence(300), capital, silence(450), france, silence(1200)]),
                                     RATE)
            committed = await call.wait_for("speculation.committed", timeout=60, after=t1)
            discarded = [e for t, e in call.events if e.get("type") == "speculation.discarded" and t >= t1]
            assert any(e["reason"] == "speech_resumed" for e in discarded), timeline(call, t1)
            done = await call.wait_for("response.done", timeout=90, after=t1,
                                       where=lambda e: e["response"]["id"] == committed["response_id"])
            assert done["response"]["status"] == "completed", done
            assert done["response"]["output_text"]
            assert call.received.speech_ms_between(t1, time.monotonic()) > 300  # the reply was heard
            transcript = await call.wait_for("conversation.item.input_audio_transcription.completed", after=t1)
            assert "france" in transcript["transcript"].lower()

            # 2. A pause that lasts until the draft's LM request is streaming (the test watches the LM server's
            #    log), then more speech: discarding the draft closes that stream, which the server logs.
            call.send({"type": "session.update",
                       "session": {"end_of_turn_ms": 15000, "max_response_tokens": 200}})
            await call.wait_for("session.updated", after=t1)
            posts = log.read_text().count("POST /v1/chat/completions")
            disconnects = log.read_text().count("Disconnected from client")
            t2 = time.monotonic()
            await call.play_and_wait(roman, RATE)
            started = await call.wait_for("speculation.started", timeout=30, after=t2)
            deadline = time.monotonic() + 12
            while log.read_text().count("POST /v1/chat/completions") <= posts and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert log.read_text().count("POST /v1/chat/completions") > posts, \
                f"the draft never reached the LM: {timeline(call, t2)}"
            await asyncio.sleep(0.3)  # a few tokens into the draft
            await call.play_and_wait(detail, RATE)
            try:
                discard = await call.wait_for("speculation.discarded", timeout=30, after=t2)
            except TimeoutError as exc:
                raise AssertionError(f"no discard: {timeline(call, t2)}") from exc
            assert discard["draft_id"] == started["draft_id"] and discard["reason"] == "speech_resumed"
            deadline = time.monotonic() + 10
            while log.read_text().count("Disconnected from client") <= disconnects and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert log.read_text().count("Disconnected from client") > disconnects, \
                "the discarded draft's stream was not closed on the LM server"
            call.send({"type": "session.update",
                       "session": {"end_of_turn_ms": 700, "max_response_tokens": 60}})
            await call.wait_for("response.done", timeout=90, after=t2)

            # 3. Barge-in: talk over the reply.
            await asyncio.sleep(0.5)
            t3 = time.monotonic()
            await call.play_and_wait(np.concatenate([story, silence(800)]), RATE)
            created = await call.wait_for("response.created", timeout=60, after=t3)
            onset = await wait_audio_onset(call, t3)
            await asyncio.sleep(0.4)  # let it speak a little
            t_barge = time.monotonic()
            await call.play_and_wait(np.concatenate([stop, silence(1000)]), RATE)
            cut = await call.wait_for("response.done", timeout=30, after=t3,
                                      where=lambda e: e["response"]["id"] == created["response"]["id"])
            assert cut["response"]["status"] == "cancelled", cut
            assert cut["response"]["status_details"]["reason"] == "turn_detected"
            # The reply's audio stopped soon after the user started talking over it. The interruption is a turn of
            # its own whose answer may already be playing, so look only before that answer was created.
            nxt = [t for t, e in call.events if e.get("type") == "response.created" and t >= t_barge
                   and e["response"]["id"] != created["response"]["id"]]
            last = call.received.last_speech_before(min(nxt, default=time.monotonic()))
            assert last is not None and last - t_barge < 2.5
            print(f"\n[openai-call] reply onset {1000 * (onset - t3):.0f} ms after the question was queued; "
                  f"barge-in cut the reply {1000 * (last - t_barge):.0f} ms after the interruption was queued")
            # The interruption is the next user turn and gets its own answer.
            await call.wait_for("response.done", timeout=90, after=t_barge,
                                where=lambda e: e["response"]["id"] != created["response"]["id"])
        finally:
            await call.close()
