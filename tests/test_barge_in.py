"""Barge-in over a real call: the reply stops, and the assistant's context entry is what was actually played."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from benchmarks.client import ParleyCall
from tests.conftest import silence, speak

pytestmark = [pytest.mark.models, pytest.mark.timeout(240)]


async def test_talking_over_the_reply_stops_it_and_truncates_context(embedded_server: str) -> None:
    call = ParleyCall(embedded_server, session={"temperature": 0.0, "tools": False, "max_response_tokens": 160})
    await call.connect()
    try:
        question, rate = speak("Tell me a long story about a brave little dragon who learns to fly.")
        start = time.monotonic()
        call.play(np.concatenate([silence(300), question]), rate)
        await call.wait_for("response.created", timeout=60, after=start)
        # Let about two seconds of the reply play, then talk over it.
        while (onset := call.received.onset_after(start + question.size / rate)) is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, onset + 2.0 - time.monotonic()))
        interrupt, _ = speak("Wait, stop, I have another question for you.")
        barge_at = time.monotonic()
        call.play(interrupt, rate)
        truncate = await call.wait_for("conversation.item.truncate", timeout=15, after=barge_at)
        truncated_at = call.first_time("conversation.item.truncate", after=barge_at)
        assert truncated_at is not None
        done = await call.wait_for("response.done", timeout=10, after=barge_at)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"

        # The reply audio stopped: within 200 ms of the server's decision the client hears no more of it.
        await asyncio.sleep(0.6)
        played_after = call.received.speech_ms_between(truncated_at + 0.2, truncated_at + 0.6)
        assert played_after <= 40, f"{played_after} ms of reply audio after the barge-in"

        # What the server says was heard matches what the client received, and the text is a prefix of the reply.
        # Played time counts the pauses between words too, so compare with the span the client received.
        last = call.received.last_speech_before(truncated_at + 0.2)
        assert last is not None
        received_ms = (last + 0.02 - onset) * 1000
        assert abs(truncate["audio_end_ms"] - received_ms) < 300, (truncate["audio_end_ms"], received_ms)
        full = done["response"]["output_text"].split()
        heard = truncate["transcript"].split()
        assert 0 < len(heard) < len(full), (truncate["transcript"], done["response"]["output_text"])
        assert heard == full[: len(heard)]
        # About 2 s of speech at ~2.5 words/s: the heard prefix is a handful of words, not the whole story.
        assert len(heard) <= 12
        # The interruption is the next user turn.
        nxt = await call.wait_for("conversation.item.input_audio_transcription.completed", timeout=30,
                                  after=barge_at)
        assert "another question" in nxt["transcript"].lower()
    finally:
        await call.close()
