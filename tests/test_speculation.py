"""Speculation over a real call: a mid-utterance pause drafts and discards, the end of turn drafts and commits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.client import ParleyCall
from tests.conftest import silence, speak

pytestmark = [pytest.mark.models, pytest.mark.timeout(240)]


def hesitant_question() -> tuple[np.ndarray, int, int]:
    """'What is the capital' … 450 ms … 'of France?': the pause is between speculate_after_ms and end_of_turn_ms."""
    first, rate = speak("What is the capital")
    second, _ = speak("of France?")
    audio = np.concatenate([silence(300), first, silence(450), second])
    return audio, rate, audio.size


async def run_turn(url: str, speculation: bool) -> tuple[ParleyCall, dict]:
    # The silence rule: these tests are about drafts at a pause of known length, not about the semantic end of
    # turn (synthesized "What is the capital" ends on a falling pitch that Smart Turn takes for a finished turn).
    call = ParleyCall(url, session={"speculation": speculation, "temperature": 0.0, "tools": False,
                                    "turn_detection": "silence"})
    await call.connect()
    audio, rate, end = hesitant_question()
    start = time.monotonic()
    call.play(audio, rate, marks={"end": end})
    done = await call.wait_for("response.done", timeout=60, after=start)
    return call, done


async def test_mid_utterance_pause_discards_one_draft_and_commits_one(embedded_server: str) -> None:
    call, done = await run_turn(embedded_server, speculation=True)
    try:
        started = call.of_type("speculation.started")
        discarded = call.of_type("speculation.discarded")
        committed = call.of_type("speculation.committed")
        assert (len(started), len(discarded), len(committed)) == (2, 1, 1), [e["type"] for _, e in call.events]
        assert discarded[0]["draft_id"] == started[0]["draft_id"]
        assert discarded[0]["reason"] == "speech_resumed"
        assert committed[0]["draft_id"] == started[1]["draft_id"]
        metrics = done["response"]["metrics"]
        assert metrics["speculative"] is True
        assert metrics["drafts_started"] == 2 and metrics["drafts_discarded"] == 1
        assert metrics["saved_ms"] > 0
        transcript = call.of_type("conversation.item.input_audio_transcription.completed")
        assert len(transcript) == 1, "only the final input becomes a user item"
        assert "capital of france" in transcript[0]["transcript"].lower()
        # The discarded draft spoke no audio: nothing arrived between the pause and the committed reply.
        first_audio = call.received.onset_after(call.mic.mark_times["end"])
        assert first_audio is not None
        assert call.received.speech_ms_between(0, call.mic.mark_times["end"]) == 0
    finally:
        await call.close()


async def test_speculation_off_gives_the_same_reply(embedded_server: str) -> None:
    on, done_on = await run_turn(embedded_server, speculation=True)
    await on.close()
    off, done_off = await run_turn(embedded_server, speculation=False)
    await off.close()
    assert not off.of_type("speculation.started")
    assert done_off["response"]["metrics"]["speculative"] is False
    assert done_on["response"]["output_text"] == done_off["response"]["output_text"]
