"""The speaking half of a session: response audio queued at the transport's rate, drained one frame at a time.

The transport's clock pulls `next_frame()` every frame period (20 ms) whatever the models are doing, and gets
silence when nothing is queued, so the outgoing stream never has a gap. The playout counts what it handed out
per generation: that count is what the user heard, and barge-in truncation is computed from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class _GenState:
    played: int = 0
    queued: int = 0
    ended: bool = False
    started: bool = False


class Playout:
    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        on_started: Callable[[str], None] = lambda gen_id: None,
        on_finished: Callable[[str], None] = lambda gen_id: None,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._on_started = on_started
        self._on_finished = on_finished
        self._queue: deque[tuple[str, np.ndarray]] = deque()
        self._offset = 0  # samples of the queue head already played
        self._gens: dict[str, _GenState] = {}
        # Generations stopped by barge-in: their work is cancelled asynchronously, so a chunk may still arrive.
        self._stopped: set[str] = set()
        self.frames_out = 0
        self.speech_frames_out = 0

    @property
    def active(self) -> bool:
        """True while response audio is queued or playing (used to guard the VAD against echo)."""
        return bool(self._queue)

    def enqueue(self, gen_id: str, samples: np.ndarray) -> None:
        if samples.size == 0 or gen_id in self._stopped:
            return
        state = self._gens.setdefault(gen_id, _GenState())
        state.queued += samples.size
        self._queue.append((gen_id, samples.astype(np.float32, copy=False)))

    def end(self, gen_id: str) -> None:
        """No more audio will come for this generation; `on_finished` fires once it has all played."""
        if gen_id in self._stopped:
            return
        state = self._gens.setdefault(gen_id, _GenState())
        state.ended = True
        self._check_finished(gen_id, state)

    def stop(self, gen_id: str) -> float:
        """Drop everything still queued (barge-in); returns the ms of this generation that were played."""
        if self._queue and self._queue[0][0] == gen_id:
            self._offset = 0
        self._queue = deque(item for item in self._queue if item[0] != gen_id)
        self._stopped.add(gen_id)
        state = self._gens.pop(gen_id, None)
        return 0.0 if state is None else state.played * 1000.0 / self.sample_rate

    def played_ms(self, gen_id: str) -> float:
        state = self._gens.get(gen_id)
        return 0.0 if state is None else state.played * 1000.0 / self.sample_rate

    def next_frame(self) -> np.ndarray:
        """The next frame as float32 mono; silence when nothing is queued."""
        out = np.zeros(self.frame_samples, np.float32)
        filled = 0
        while filled < self.frame_samples and self._queue:
            gen_id, samples = self._queue[0]
            take = min(self.frame_samples - filled, samples.size - self._offset)
            out[filled : filled + take] = samples[self._offset : self._offset + take]
            filled += take
            self._offset += take
            state = self._gens.get(gen_id)
            if state is not None:
                state.played += take
                if not state.started:
                    state.started = True
                    self._on_started(gen_id)
            if self._offset >= samples.size:
                self._queue.popleft()
                self._offset = 0
                if state is not None:
                    self._check_finished(gen_id, state)
        self.frames_out += 1
        if filled:
            self.speech_frames_out += 1
        return out

    def _check_finished(self, gen_id: str, state: _GenState) -> None:
        if state.ended and state.played >= state.queued:
            self._gens.pop(gen_id, None)
            self._on_finished(gen_id)
