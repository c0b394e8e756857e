"""Pacing of received audio: is each 20 ms frame on time, late, or bunched with the one before it?

A frame's media timestamp (RTP, 48 kHz) says when it belongs on the sender's clock; its arrival time says when it
came. `arrival - pts/48000` is constant for a perfectly paced stream, so its excess over the best value seen is
how late the frame is, whatever frames were lost in between. A player holding `late_ms` of audio would have
run dry for every frame later than that: those are the late frames. A bunched frame arrived within `bunch_ms` of
the previous one: it was held back and sent in a burst (an event-loop stall on the sender).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEDIA_RATE = 48000
LATE_MS = 20.0
BUNCH_MS = 5.0


@dataclass(frozen=True)
class Pacing:
    frames: int
    late: int
    bunched: int
    lateness_p99_ms: float
    lateness_max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {"frames": self.frames, "late": self.late, "bunched": self.bunched,
                "lateness_p99_ms": round(self.lateness_p99_ms, 1), "lateness_max_ms": round(self.lateness_max_ms, 1)}


def lateness_ms(times: list[float], pts: list[int]) -> np.ndarray:
    """Per-frame lateness (ms) relative to the best-paced frame of the stream."""
    if not times:
        return np.zeros(0)
    t = np.asarray(times, np.float64)
    if len(pts) != len(times):
        # A caller without media timestamps (telephony): assume contiguous 20 ms frames, no loss.
        pts = [i * MEDIA_RATE // 50 for i in range(len(times))]
    p = np.asarray(pts, np.float64)
    # RTP timestamps wrap at 2^32: a large backward step is a wrap, not a reordering.
    steps = np.diff(p)
    steps = np.where(steps < -(2.0**31), steps + 2.0**32, steps)
    p = p[0] + np.concatenate([[0.0], np.cumsum(steps)])
    offset = t - p / MEDIA_RATE
    return (offset - offset.min()) * 1000.0


def pacing(times: list[float], pts: list[int], t0: float = float("-inf"), t1: float = float("inf"),
           late_ms: float = LATE_MS, bunch_ms: float = BUNCH_MS) -> Pacing:
    """Pacing of the frames that arrived in [t0, t1); lateness is judged against the whole stream."""
    late = lateness_ms(times, pts)
    t = np.asarray(times, np.float64)
    sel = (t >= t0) & (t < t1)
    if not sel.any():
        return Pacing(0, 0, 0, 0.0, 0.0)
    gaps = np.diff(t) * 1000.0
    bunched = np.concatenate([[False], gaps < bunch_ms]) & sel
    chosen = late[sel]
    return Pacing(
        frames=int(sel.sum()),
        late=int((chosen > late_ms).sum()),
        bunched=int(bunched.sum()),
        lateness_p99_ms=float(np.percentile(chosen, 99)),
        lateness_max_ms=float(chosen.max()),
    )
