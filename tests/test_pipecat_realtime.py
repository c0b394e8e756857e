"""Pipecat's OpenAI Realtime plugin holds a spoken turn with Parley, with only `base_url` changed.

`OpenAIRealtimeLLMService` (pipecat-ai) runs in a real pipecat pipeline, without a transport: the test feeds it
microphone-like `InputAudioRawFrame`s of synthesized speech, paced in real time, and records what the service
pushes out. Parley's server VAD ends the turn and answers; the test proves that pipecat parses every event of that
turn (its receive loop dies on one it cannot validate), plays the reply as audible `TTSAudioRawFrame`s, shows its
transcript as text frames, hears the user through input transcription, and reports no error along the way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from loguru import logger  # pipecat logs through loguru, which it brings along
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

from tests.conftest import silence, speak, words

QUESTION = "What is the capital of France?"
RATE = 24000  # the Realtime API's pcm16 rate: pipecat then sends the frames as they are, unresampled
CHUNK_MS = 20  # what a transport's microphone delivers per frame


def dbfs(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float32) / 32768.0
    return 20 * float(np.log10(max(float(np.sqrt(np.mean(x * x))), 1e-6)))


class Recorder(FrameProcessor):
    """Records the frames travelling one way past it (and passes everything on), so the test can wait on them."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self._arrived = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction:
            async with self._arrived:
                self.frames.append(frame)
                self._arrived.notify_all()
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)]

    async def first(self, kind: type[Frame], timeout: float) -> Any:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: bool(self.of(kind))), timeout)
        return self.of(kind)[0]


@pytest.mark.timeout(120)
async def test_pipecat_realtime_service_holds_a_spoken_turn(embedded_server: str) -> None:
    port = embedded_server.rsplit(":", 1)[1]
    service = OpenAIRealtimeLLMService(
        api_key="unused-on-loopback",
        base_url=f"ws://127.0.0.1:{port}/v1/realtime",
        settings=OpenAIRealtimeLLMService.Settings(
            model="parley-embedded",
            system_instruction="You are a helpful voice assistant. Answer in one short sentence.",
            session_properties=events.SessionProperties(audio=events.AudioConfiguration(
                # Transcription on, so that pipecat also gets to parse the user's transcript events.
                input=events.AudioInput(transcription=events.InputAudioTranscription(),
                                        turn_detection=events.TurnDetection(silence_duration_ms=700)))),
        ),
    )
    upstream, downstream = Recorder(FrameDirection.UPSTREAM), Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([upstream, service, downstream]),
        params=PipelineParams(audio_in_sample_rate=RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,  # the turn's silences are not idleness to end on
    )
    errors: list[ErrorFrame] = []
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_error")
    async def _on_error(_worker: PipelineWorker, frame: ErrorFrame) -> None:
        errors.append(frame)

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    # A server event pipecat cannot validate kills its receive task with only a log line, no ErrorFrame.
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)), level="ERROR")
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 20)
        # session.update goes out on session.created; wait for session.updated so the turn runs under it.
        deadline = time.monotonic() + 20
        while not service._api_session_ready:
            assert time.monotonic() < deadline and not errors, f"no session.updated: {errors}"
            await asyncio.sleep(0.05)

        audio, rate = speak(QUESTION)
        assert rate == RATE
        clip = (np.clip(np.concatenate([silence(300), audio, silence(1500)]), -1, 1) * 32767).astype("<i2")
        step = RATE * CHUNK_MS // 1000
        t0 = time.monotonic()
        for n, i in enumerate(range(0, clip.size, step)):
            await worker.queue_frame(InputAudioRawFrame(audio=clip[i : i + step].tobytes(), sample_rate=RATE,
                                                        num_channels=1))
            # Paced like a live microphone, not as a file.
            await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK_MS / 1000 - time.monotonic()))

        # response.done is what ends pipecat's response; the reply audio streams in real time before it.
        await downstream.first(LLMFullResponseEndFrame, 60)
        await downstream.first(TTSStoppedFrame, 5)
        heard = await upstream.first(TranscriptionFrame, 10)
    finally:
        await worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(running), 15)
        except TimeoutError:
            await worker.cancel(reason="test teardown")
            await asyncio.wait_for(running, 10)
        logger.remove(sink)

    assert not errors, [e.error for e in errors]
    assert not logged, logged
    # Parley's speech_started/speech_stopped became pipecat's turn proposals (what its turn strategies act on).
    assert downstream.of(ProposedUserStartedSpeakingFrame) and downstream.of(ProposedUserStoppedSpeakingFrame)
    assert downstream.of(TTSStartedFrame), "the reply was announced as speech"
    reply = np.frombuffer(b"".join(f.audio for f in downstream.of(TTSAudioRawFrame)), "<i2")
    assert {f.sample_rate for f in downstream.of(TTSAudioRawFrame)} == {RATE}
    assert reply.size / RATE > 0.5 and dbfs(reply) > -35, "the reply is audible speech, not silence"
    transcript = "".join(f.text for f in downstream.of(TTSTextFrame))
    assert words(transcript), "the reply's transcript came along as text frames"
    assert {"capital", "france"} <= set(words(heard.text)), heard.text
