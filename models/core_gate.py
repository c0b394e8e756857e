"""The embedded stack's heavy stages take turns on the cores instead of running at once.

Whisper (CTranslate2) and llama.cpp each run an OpenMP team as wide as the machine, and hibari runs beside them.
Run at once on two cores they do not split the machine, they fight over it: OpenMP threads spin while they wait
for a team mate that the other runtime's threads have pushed off its core. Measured offline (2026-12-07, 2 vCPU,
Whisper base on 2 s of speech, Qwen2.5-0.5B generating, hibari synthesizing): a Whisper pass alone takes 83 ms
(p50); beside the LM 245 ms, beside the LM and hibari 265 ms (max 986), while the LM fell from 23.5 to 12.0 and 4.4
tokens/s. Taking turns (one LM token or one Whisper pass at a time) kept the pass at its solo cost beside the LM
(86 ms p50) with the LM at 10.5 tokens/s, and the live two-call figures followed (benchmarks/README.md).

A turn is one bounded step: an LM token (the first also reads the prompt), one TTS sentence, a whole final Whisper
pass, or one step (encode, decode, align) of a partial pass. Who goes next is by priority: the final pass of a
caller who has stopped speaking, then speech on its way out (LM and TTS, in arrival order), then live transcripts.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator

FINAL_PASS = 0  # a caller waits for these words now
SPEECH = 1  # LM tokens and TTS sentences of a reply or a draft
LIVE_TRANSCRIPT = 2  # partial passes while the caller still speaks


class CoreGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._order = itertools.count()
        self._busy = False

    def waiting(self) -> int:
        """Stages queued for the cores (not counting the one that has them)."""
        with self._cond:
            return len(self._waiting)

    @contextlib.contextmanager
    def turn(self, priority: int) -> Iterator[None]:
        entry = (priority, next(self._order))
        with self._cond:
            heapq.heappush(self._waiting, entry)
            while self._busy or self._waiting[0] != entry:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def turn(gate: CoreGate | None, priority: int) -> contextlib.AbstractContextManager[None]:
    """`gate.turn(priority)`, or nothing where the stages run at once (no gate)."""
    return gate.turn(priority) if gate is not None else contextlib.nullcontext()
