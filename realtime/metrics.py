"""Prometheus metrics (GET /metrics) and the event-loop lag probe.

Each worker process serves its own registry; scrape every worker or run one (see docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

SESSIONS = Gauge("parley_active_sessions", "Live sessions in this worker", ["transport"])
SESSIONS_TOTAL = Counter("parley_sessions_opened_total", "Sessions opened", ["transport"])
REJECTED = Counter("parley_sessions_rejected_total", "Sessions refused", ["reason"])
DRAFTS = Counter("parley_drafts_total", "Speculative drafts by outcome", ["outcome"])
SAVED = Histogram("parley_speculation_saved_ms", "Milliseconds saved per committed draft",
                  buckets=(50, 100, 200, 300, 400, 500, 700, 1000, 2000))
V2V = Histogram("parley_voice_to_voice_ms", "User speech end to first reply audio out (server side)",
                buckets=(200, 400, 600, 800, 1000, 1200, 1500, 2000, 3000, 5000))
LOOP_LAG = Histogram("parley_event_loop_lag_ms", "Event-loop scheduling lag",
                     buckets=(1, 2, 5, 10, 20, 50, 100, 250))
GC_PAUSE = Histogram("parley_gc_pause_ms", "Full garbage collections after calls end: how long each held the loop",
                     buckets=(0.5, 1, 2, 5, 10, 20, 50))
LOOP_LAG_MAX = Gauge("parley_event_loop_lag_max_ms", "Largest event-loop lag in the last probe window")


def observe_response(m: dict[str, Any]) -> None:
    """Per-turn figures from a response.done's metrics."""
    if m.get("speech_end_to_first_audio_ms") is not None:
        V2V.observe(m["speech_end_to_first_audio_ms"])
    if m.get("saved_ms") is not None:
        SAVED.observe(m["saved_ms"])


def observe_summary(summary: dict[str, Any]) -> None:
    DRAFTS.labels("committed").inc(summary.get("drafts_committed", 0))
    DRAFTS.labels("discarded").inc(summary.get("drafts_discarded", 0))


class LoopLagProbe:
    """Sleeps `interval` and measures how late it wakes: the lag any audio frame would have suffered."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.max_ms = 0.0
        self.recent_max_ms = 0.0  # largest lag over the last complete 10 s window
        self.samples = 0
        self._window_max = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    def reset(self) -> None:
        """Forget the maxima so far (the model load's GIL-heavy start-up is no call's lag)."""
        self.max_ms = self._window_max = self.recent_max_ms = 0.0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        window_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = (time.perf_counter() - t0 - self.interval_s) * 1000.0
            LOOP_LAG.observe(max(0.0, lag))
            self.samples += 1
            self.max_ms = max(self.max_ms, lag)
            self._window_max = max(self._window_max, lag)
            if time.perf_counter() - window_start > 10:
                LOOP_LAG_MAX.set(self._window_max)
                self.recent_max_ms = self._window_max
                self._window_max, window_start = 0.0, time.perf_counter()
