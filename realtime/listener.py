"""The listening half of a session: 16 kHz audio → VAD → speech start/stop, and the turn's tokenizer segments.

Audio arrives stamped with the time the transport received it. Speech ends are dated by the window in which the
speech was last heard, not by when the VAD became sure it had stopped, so the end-of-turn timer measures the
user's real silence and the VAD's own hangover is not added to every response.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from models.interfaces import (
    PassStopped,
    SpeechTokenizer,
    TokenizerStream,
    UserInput,
    VadStream,
    VoiceActivityDetector,
)
from models.priority_executor import BACKGROUND, URGENT, PriorityExecutor
from realtime.audio import ENGINE_RATE, AudioRing

log = logging.getLogger(__name__)

PREROLL_MS = 240  # audio kept before the VAD's speech start: the onset of the first word
NEG_THRESHOLD_GAP = 0.15  # hysteresis: speech continues until the probability falls this far below threshold
# Endpointing: Silero decides *that* speech stopped, energy decides *where*. Its probability decays for one or two
# 32 ms windows after the voice stops (measured: the end dated 40-90 ms late on clean speech), so the end is moved
# back to the last 10 ms frame within END_DROP_DB of the utterance's loudest frame, searching END_SEARCH_MS back.
END_FRAME = ENGINE_RATE // 100
END_SEARCH_MS = 256
END_DROP_DB = 30.0
END_FLOOR_DBFS = -55.0


def energy_end(audio: np.ndarray, reference: np.ndarray) -> int:
    """Samples to cut from the end of `audio` so it ends at the last frame that still carries voice energy."""
    def db(x: np.ndarray) -> np.ndarray:
        frames = x[: x.size - x.size % END_FRAME].reshape(-1, END_FRAME)
        return 20 * np.log10(np.maximum(np.sqrt(np.mean(frames * frames, axis=1)), 1e-6))

    if audio.size < END_FRAME or reference.size < END_FRAME:
        return 0
    floor = max(float(db(reference).max()) - END_DROP_DB, END_FLOOR_DBFS)
    levels = db(audio[audio.size % END_FRAME :])
    loud = np.nonzero(levels > floor)[0]
    if loud.size == 0:
        return 0
    return (levels.size - 1 - int(loud[-1])) * END_FRAME


@dataclass(frozen=True)
class SpeechStart:
    at_ms: float
    sample: int


@dataclass(frozen=True)
class SpeechStop:
    at_ms: float
    speech_end_ms: float
    sample: int


@dataclass(frozen=True)
class Hypothesis:
    text: str


ListenerEvent = SpeechStart | SpeechStop | Hypothesis


class SpeechSegmenter:
    """Per-window speech probabilities → debounced speech starts and stops (pure; unit-tested)."""

    def __init__(self, window_samples: int, threshold: float, min_speech_ms: int) -> None:
        self.window_ms = window_samples * 1000 / ENGINE_RATE
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.speaking = False
        self._run_ms = 0.0
        self._run_start: tuple[float, int] | None = None
        # The last window at or above the threshold: it dates the speech end. Windows in the hysteresis band keep
        # the segment open (no stop/start chatter on a dipping syllable) but are Silero's decay, not speech.
        self._last_speech: tuple[float, int] = (0.0, 0)

    def push(self, prob: float, at_ms: float, end_sample: int) -> SpeechStart | SpeechStop | None:
        start_sample = end_sample - int(self.window_ms * ENGINE_RATE / 1000)
        if not self.speaking:
            if prob >= self.threshold:
                if self._run_start is None:
                    self._run_start = (at_ms, start_sample)
                    self._run_ms = 0.0
                self._run_ms += self.window_ms
                self._last_speech = (at_ms, end_sample)
                if self._run_ms >= self.min_speech_ms:
                    self.speaking = True
                    started = self._run_start
                    self._run_start = None
                    return SpeechStart(at_ms=started[0], sample=started[1])
            else:
                self._run_start = None
            return None
        if prob >= self.threshold:
            self._last_speech = (at_ms, end_sample)
            return None
        if prob >= self.threshold - NEG_THRESHOLD_GAP:
            return None
        self.speaking = False
        return SpeechStop(at_ms=at_ms, speech_end_ms=self._last_speech[0], sample=self._last_speech[1])


class Listener:
    """Runs the VAD on a stage thread and the tokenizer's passes on another, posting events in order.

    The tokenizer's thread is shared by every session and ordered by urgency (models/priority_executor.py): a
    final pass, which a caller who stopped speaking waits for, goes before any partial pass of any session, and a
    partial pass still running when any session's final pass is asked for is abandoned at its next step.
    """

    def __init__(
        self,
        vad: VoiceActivityDetector,
        tokenizer: SpeechTokenizer,
        vad_executor: Executor,
        asr_executor: PriorityExecutor,
        post: Callable[[ListenerEvent], None],
        threshold: float,
        min_speech_ms: int,
        max_turn_ms: int,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._vad: VadStream = vad.open_stream()
        self._window = vad.frame_samples
        self._tokenizer_model = tokenizer
        self._tokenizer: TokenizerStream = tokenizer.open_stream()
        self._clock = clock
        # 0 = no passes while speaking (the tokenizer works only at pauses).
        self._segment_samples = tokenizer.segment_ms * ENGINE_RATE // 1000
        self._vad_executor = vad_executor
        self._asr_executor = asr_executor
        self._post = post
        self.segmenter = SpeechSegmenter(self._window, threshold, min_speech_ms)
        # Recent audio: enough for the longest turn plus pre-roll.
        self._audio = AudioRing((max_turn_ms + 2 * PREROLL_MS) * ENGINE_RATE // 1000)
        self._pending = np.zeros(0, np.float32)
        # End sample and arrival ms of recent pushes (ascending): each VAD window is dated by the push that completed
        # it. Kept short: a window's push is at most a few pushes old.
        self._arrival_ends: list[int] = []
        self._arrival_ms: list[float] = []
        self._queue: asyncio.Queue[bool | None] = asyncio.Queue()  # True: audio arrived; None: close
        self._turn_start: int | None = None
        # Final passes by end sample: started early (at the speech stop) and reused by the draft/end of turn.
        self._passes: dict[int, asyncio.Future[UserInput]] = {}
        # Per final pass: its stop flag (set when nobody wants its words any more) and its place in the ASR queue.
        self._stops: dict[int, tuple[threading.Event, Future[UserInput]]] = {}
        self._next_segment = 0
        self._segment_task: asyncio.Future[str] | None = None
        self._partials = 0  # bumped when a final pass abandons the partial pass in flight
        self._task = asyncio.create_task(self._run(), name="listener")

    # --- called by the session (event loop) ------------------------------------------------------------------

    def push(self, samples: np.ndarray, at_ms: float) -> None:
        """16 kHz float32 mono from the transport, stamped with its arrival time."""
        # Kept at once (a client's commit right after its append must find the audio); the VAD runs behind.
        self._append(samples, at_ms)
        self._queue.put_nowait(True)

    @property
    def samples_end(self) -> int:
        """Samples received so far: the sample index the next audio starts at."""
        return self._audio.end

    def set_threshold(self, threshold: float) -> None:
        self.segmenter.threshold = threshold

    @property
    def turn_open(self) -> bool:
        return self._turn_start is not None

    def open_turn(self, start_sample: int) -> None:
        start = max(self._audio.start, start_sample - PREROLL_MS * ENGINE_RATE // 1000)
        self._turn_start = start
        self._forget_passes()
        self._next_segment = start + self._segment_samples
        self._tokenizer.reset()

    def close_turn(self) -> None:
        self._turn_start = None
        self._forget_passes()

    def _forget_passes(self) -> None:
        self._passes.clear()
        self._stops.clear()

    def turn_audio(self, end_sample: int) -> np.ndarray:
        start = self._turn_start if self._turn_start is not None else end_sample
        return self._audio.slice(start, end_sample)

    def final_pass(self, end_sample: int) -> asyncio.Future[UserInput]:
        """The tokenizer's final pass over the open turn up to `end_sample`, started once and shared.

        The session starts it the moment speech stops (when speculating): by the time a draft or the end of the
        turn asks for this span, most of the pass is done. Another end sample is another pass.
        """
        fut = self._passes.get(end_sample)
        if fut is None:
            if self._segment_task is not None and not self._segment_task.done():
                # A partial pass still queued will not start; one running is stopped by the executor's preempt
                # hook when this urgent pass is submitted.
                self._partials += 1
            stop = threading.Event()
            queued = self._submit(self._tokenizer, self.turn_audio(end_sample), stop.is_set)
            fut = asyncio.wrap_future(queued)
            self._passes[end_sample] = fut
            self._stops[end_sample] = (stop, queued)
        return fut

    def drop_pass(self, end_sample: int) -> None:
        """Nobody wants the final pass up to `end_sample` (the caller went on): it stops at its next step, or
        leaves the queue (cancelled: it may wait behind another caller's pass). A later final_pass for this span
        starts a fresh one."""
        entry = self._stops.pop(end_sample, None)
        self._passes.pop(end_sample, None)
        if entry is not None:
            stop, queued = entry
            stop.set()
            queued.cancel()  # only succeeds while it waits for the thread

    def span_pass(self, start_sample: int, end_sample: int) -> asyncio.Future[UserInput]:
        """One tokenizer pass over exactly [start_sample, end_sample): audio a client committed itself."""
        audio = self._audio.slice(max(self._audio.start, start_sample), end_sample)
        # A stream of its own: what the turn's stream agreed on belongs to other audio.
        return asyncio.wrap_future(self._submit(self._tokenizer_model.open_stream(), audio))

    def _submit(self, stream: TokenizerStream, audio: np.ndarray, stop: Callable[[], bool] | None = None
                ) -> Future[UserInput]:
        clock = self._clock
        queued = clock() if clock is not None else 0.0

        def run() -> UserInput:
            if stop is not None and stop():
                raise PassStopped  # dropped while it waited for the thread
            started = clock() if clock is not None else 0.0
            result = stream.finalize(audio, stop)
            if clock is None:
                return result
            # When the words were ready, on the session's clock: a draft may ask for them only later.
            done = clock()
            timing = {**result.timing, "queued_ms": round(started - queued, 1), "done_ms": round(done, 1)}
            return dataclasses.replace(result, timing=timing)

        log.debug("final pass over %d samples", audio.size)
        return self._asr_executor.submit_at(URGENT, run)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        await asyncio.gather(self._task, return_exceptions=True)

    # --- internals -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if await self._queue.get() is None:
                return
            # Everything that arrived behind a slow step goes to the VAD thread as one batch, not many hops.
            closing = False
            while not self._queue.empty():
                if self._queue.get_nowait() is None:
                    closing = True
            if closing:
                self._queue.put_nowait(None)
            windows = self._take_windows()
            if windows:
                try:
                    probs = await loop.run_in_executor(self._vad_executor, self._probabilities, windows)
                except Exception:
                    log.exception("VAD failed; treating the audio as silence")
                    probs = [0.0] * len(windows)
                end = self._audio.end - self._pending.size
                first_end = end - (len(windows) - 1) * self._window
                for i, prob in enumerate(probs):
                    window_end = first_end + i * self._window
                    event = self.segmenter.push(prob, self._arrival_of(window_end), window_end)
                    if isinstance(event, SpeechStop):
                        event = self._refine_end(event)
                    if event is not None:
                        self._post(event)
            self._maybe_segment()

    def _probabilities(self, windows: list[np.ndarray]) -> list[float]:
        return [self._vad.probability(w) for w in windows]

    def _refine_end(self, stop: SpeechStop) -> SpeechStop:
        """Date the end by energy; the sample (what gets transcribed) stays where Silero put it."""
        search = END_SEARCH_MS * ENGINE_RATE // 1000
        tail = self._audio.slice(stop.sample - search, stop.sample)
        reference = self._audio.slice(stop.sample - ENGINE_RATE, stop.sample)
        cut = energy_end(tail, reference)
        if cut == 0:
            return stop
        return SpeechStop(at_ms=stop.at_ms, speech_end_ms=self._arrival_of(stop.sample - cut), sample=stop.sample)

    def _arrival_of(self, sample: int) -> float:
        i = bisect.bisect_left(self._arrival_ends, sample)
        return self._arrival_ms[min(i, len(self._arrival_ms) - 1)]

    def _append(self, samples: np.ndarray, at_ms: float) -> None:
        self._audio.append(samples)
        self._arrival_ends.append(self._audio.end)
        self._arrival_ms.append(at_ms)
        if len(self._arrival_ends) > 512:
            del self._arrival_ends[:256], self._arrival_ms[:256]
        self._pending = np.concatenate([self._pending, samples])

    def _take_windows(self) -> list[np.ndarray]:
        n = self._pending.size // self._window
        windows = [self._pending[i * self._window : (i + 1) * self._window] for i in range(n)]
        self._pending = self._pending[n * self._window :]
        return windows

    def _maybe_segment(self) -> None:
        # The fixed-segment pass: while the user speaks, hand the tokenizer each completed segment of the turn.
        if self._turn_start is None or not self._segment_samples or self._audio.end < self._next_segment:
            return
        if self._segment_task is not None and not self._segment_task.done():
            return  # the previous pass is still running; the next one will cover this segment too
        if not self.segmenter.speaking:
            return  # paused: the final pass is about to run, do not compete with it for the cores
        end = self._audio.end
        audio = self._audio.slice(self._turn_start, end)
        self._next_segment = end + self._segment_samples
        partial = self._partials

        def run() -> str:
            return "" if partial != self._partials else self._tokenizer.push_segment(audio)

        # Background work: any session's final pass goes first, and stops this pass at its next step if running.
        self._segment_task = asyncio.wrap_future(
            self._asr_executor.submit_at(BACKGROUND, run, preempt=self._tokenizer.abandon))
        self._segment_task.add_done_callback(self._segment_done)

    def _segment_done(self, fut: asyncio.Future[str]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.warning("tokenizer segment pass failed: %s", exc)
        elif fut.result():
            self._post(Hypothesis(fut.result()))
