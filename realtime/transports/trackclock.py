"""The send clock of an aiortc audio track: frame k is handed out at start + k·frame/rate on the wall clock.

aiortc calls `recv()` as fast as it returns, so a sending track must wait itself. Frames are never skipped: their
pts become the RTP timestamps, so after a stall the missed frames go out back to back (the phone transports'
`phone.FrameClock` drops them instead, because a phone plays whatever arrives).
"""

from __future__ import annotations

import asyncio
import time


class TrackClock:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.pts = 0
        self._start: float | None = None

    async def next_frame(self, samples: int) -> int:
        """Wait until the next frame is due (`samples` after the previous one); returns its pts."""
        if self._start is None:
            self._start = time.monotonic()
        else:
            self.pts += samples
            wait = self._start + self.pts / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self.pts
