"""One generation's work: LM tokens → sentence pieces → speech decoder chunks → (held or released) audio.

A draft runs exactly like a committed response except that its audio is held here instead of reaching the
playout; `release()` (the commit) flushes what is held and lets the rest stream straight through. When the LM
asks for a tool, the stream pauses until the session hands in a continuation prompt (`resume`), so a response is
one task from its first token to its last chunk whatever tools it calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from models.interfaces import GenerationOptions, LanguageModel, Message, SpeechSynthesizer, ToolCall, VoiceSettings
from models.threaded import iterate_in_thread
from realtime.audio import Resampler
from realtime.sentences import SentenceSplitter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    text: str
    duration_ms: float
    in_context: bool


@dataclass(frozen=True)
class ToolRequest:
    call: ToolCall


@dataclass(frozen=True)
class TurnScore:
    """The LM's probability that the user's message is complete (a draft that asked: score_turn_end)."""

    probability: float


@dataclass(frozen=True)
class Finished:
    error: str | None


ResponseEvent = Token | AudioChunk | ToolRequest | TurnScore | Finished


class Response:
    def __init__(
        self,
        gen_id: str,
        lm: LanguageModel,
        tts: SpeechSynthesizer,
        tts_executor: Executor,
        voice: VoiceSettings,
        options: GenerationOptions,
        out_rate: int,
        post: Callable[[str, ResponseEvent], None],
        play: Callable[[str, np.ndarray], None],
        end_audio: Callable[[str], None],
        speak: bool = True,
    ) -> None:
        self.gen_id = gen_id
        self._lm = lm
        self._tts = tts
        self._tts_executor = tts_executor
        self._voice = voice
        self._options = options
        self._post = post
        self._play = play
        self._end_audio = end_audio
        self._speak_aloud = speak  # False: words only (a text-only session), no decoder work
        self._resampler = Resampler(tts.sample_rate, out_rate)
        self._held: list[np.ndarray] = []
        self._released = False
        self._audio_complete = False
        self._continuation: asyncio.Future[Sequence[Message] | None] | None = None
        self._speaking = asyncio.Lock()  # fillers and LM pieces take turns on the decoder
        self.task: asyncio.Task[None] | None = None
        self._fillers: set[asyncio.Task[None]] = set()

    def start(self, messages: Sequence[Message]) -> None:
        self.task = asyncio.create_task(self._run(messages), name=f"response-{self.gen_id}")

    def release(self) -> None:
        """Commit: the held audio goes out now, the rest as it is made."""
        self._released = True
        for chunk in self._held:
            self._play(self.gen_id, chunk)
        self._held.clear()
        if self._audio_complete:
            self._end_audio(self.gen_id)

    def resume(self, messages: Sequence[Message] | None) -> None:
        """Continue after a tool call with a prompt that holds the call and its result (None: stop here)."""
        if self._continuation is not None and not self._continuation.done():
            self._continuation.set_result(messages)

    def speak(self, text: str) -> None:
        """Say a fixed text now (a filler while a tool runs); it counts as audio of this response."""
        task = asyncio.create_task(self._say(text, in_context=False), name=f"filler-{self.gen_id}")
        self._fillers.add(task)
        task.add_done_callback(self._fillers.discard)

    async def cancel(self) -> None:
        """Stop all work; returns once the LM and decoder threads have actually stopped."""
        tasks = [t for t in (self.task, *self._fillers) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, messages: Sequence[Message]) -> None:
        error: str | None = None
        try:
            prompt: Sequence[Message] | None = messages
            while prompt is not None:
                prompt = await self._generate(prompt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("generation %s failed", self.gen_id)
            error = f"{type(exc).__name__}: {exc}"
        # A held draft's audio is not finished until it has been released and played.
        self._audio_complete = True
        if self._released:
            self._end_audio(self.gen_id)
        self._post(self.gen_id, Finished(error))

    async def _generate(self, messages: Sequence[Message]) -> Sequence[Message] | None:
        """One LM pass; returns the continuation prompt if it stopped for a tool call."""
        splitter = SentenceSplitter()
        stream = self._lm.stream(messages, self._options)
        try:
            async for delta in stream:
                if delta.finished is not None:
                    self._post(self.gen_id, TurnScore(delta.finished))
                if delta.tool_call is not None:
                    for piece in splitter.flush():
                        await self._say(piece)
                    self._continuation = asyncio.get_running_loop().create_future()
                    self._post(self.gen_id, ToolRequest(delta.tool_call))
                    return await self._continuation
                if delta.text:
                    self._post(self.gen_id, Token(delta.text))
                    for piece in splitter.push(delta.text):
                        await self._say(piece)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        for piece in splitter.flush():
            await self._say(piece)
        return None

    async def _say(self, text: str, in_context: bool = True) -> None:
        if not self._speak_aloud:
            return
        async with self._speaking:
            first = True
            async for pcm in iterate_in_thread(self._tts.stream(text, self._voice), self._tts_executor):
                out = self._resampler.process(pcm)
                duration_ms = pcm.size * 1000.0 / self._tts.sample_rate
                self._post(self.gen_id, AudioChunk(text if first else "", duration_ms, in_context))
                first = False
                if self._released:
                    self._play(self.gen_id, out)
                else:
                    self._held.append(out)
