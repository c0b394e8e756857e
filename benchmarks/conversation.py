"""Plays one scenario into one call in real time and keeps what happened, for `turns.analyse_call`.

Turn by turn: the turn's audio is queued on the caller's microphone (sent in 20 ms frames on the wall clock),
then `after_ms` of silence follows. The next turn does not start while the reply to this one is still going:
the harness also waits for the reply's `response.done` (up to `reply_timeout`), so replies never overlap the
next question and every turn is measured alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client import RATE, Received
from benchmarks.scenarios import RenderedTurn, Scenario
from benchmarks.transports import Caller
from benchmarks.wire import WireLog

# A call whose audio stopped for this long is dead: the server sends a frame every 20 ms, silence included.
DEAD_AFTER_S = 3.0


@dataclass
class TurnPlay:
    index: int
    transcript: str | None
    start_t: float = 0.0  # monotonic time the turn's first frame was sent
    speech_end_t: float = 0.0  # ... the frame holding the last speech sample
    last_speech_start_t: float = 0.0  # ... the first frame of the last audio segment's speech
    next_start_t: float | None = None  # the next turn's start (or the hang-up)
    error: str | None = None


@dataclass
class CallRecord:
    arm: str
    scenario: str
    session: int
    overrides: dict[str, Any]
    turns: list[TurnPlay] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    received: Received = field(default_factory=Received)
    wire: WireLog | None = None  # RTP/RTCP timing, when the caller keeps it (WebRTC)
    server_clock_origin: float | None = None
    session_id: str | None = None
    connect_ms: float | None = None
    start_t: float = 0.0
    end_t: float = 0.0
    error: str | None = None


async def play_scenario(call: Caller, scenario: Scenario, record: CallRecord, reply_timeout: float,
                        connect_timeout: float = 30.0, on_turn: Any = None, start_at: float | None = None,
                        until: float | None = None) -> CallRecord:
    """Connect, play every turn, hang up; failures end up in `record.error` / a turn's `error`, never raised.

    `start_at` holds the first turn until that monotonic time (calls of a load test speak only once all are
    connected); no turn starts after `until` (a load test's end), and turns not played are dropped.
    """
    record.turns = [TurnPlay(i, t.transcript) for i, t in enumerate(scenario.turns)]
    t0 = time.monotonic()
    try:
        await call.connect(timeout=connect_timeout)
        record.connect_ms = (time.monotonic() - t0) * 1000.0
        record.session_id = call.session_id
        record.start_t = time.monotonic()
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        for turn, play in zip(scenario.turns, record.turns, strict=True):
            if until is not None and time.monotonic() >= until:
                record.turns = record.turns[: play.index]
                break
            await _play_turn(call, turn.render(), turn.after_ms, play, reply_timeout)
            if on_turn is not None:
                on_turn(play)
            if play.error is not None and not _alive(call.received):
                record.error = f"the call died during turn {play.index}: {play.error}"
                break
    except Exception as exc:  # a failed call is a result to report, not a crash of the harness
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        record.end_t = time.monotonic()
        for prev, nxt in zip(record.turns, record.turns[1:], strict=False):
            prev.next_start_t = nxt.start_t or None
        if record.turns and record.turns[-1].next_start_t is None:
            record.turns[-1].next_start_t = record.end_t
        record.server_clock_origin = getattr(call, "server_clock_origin", None)
        try:
            await asyncio.wait_for(call.close(), 10)
        except Exception:  # closing a broken call may fail too; its data is already kept
            pass
        record.events = list(call.events)
        record.received = call.received
        record.wire = getattr(call, "wire", None)
    return record


async def _play_turn(call: Caller, rendered: RenderedTurn, after_ms: int, play: TurnPlay, reply_timeout: float) -> None:
    key = f"turn{play.index}"
    # In sample order: a caller may record marks strictly in queue order.
    marks = {f"{key}.start": 0, f"{key}.last": rendered.last_speech_start, f"{key}.end": rendered.speech_end}
    # The microphone drains on its own 20 ms clock; waiting for it (not estimating) keeps a slow client's marks true.
    try:
        await asyncio.wait_for(call.play_and_wait(rendered.samples, RATE, marks), rendered.duration_s + 10.0)
    except TimeoutError:
        pass
    # WebRTC callers keep marks on their microphone track, the Twilio caller on itself; a caller whose
    # play_and_wait returns once the audio is buffered (not sent) is waited for by its end mark.
    holder: Any = getattr(call, "mic", call)
    times: dict[str, float] = holder.mark_times
    deadline = time.monotonic() + rendered.duration_s + 10.0
    while f"{key}.end" not in times and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    play.start_t = times.get(f"{key}.start", 0.0)
    play.speech_end_t = times.get(f"{key}.end", 0.0)
    play.last_speech_start_t = times.get(f"{key}.last", play.start_t)
    if not play.speech_end_t:
        play.error = "the turn's audio was not sent"
        return
    await asyncio.sleep(after_ms / 1000.0)
    remaining = max(1.0, reply_timeout - (time.monotonic() - play.speech_end_t))
    try:
        await call.wait_for("response.done", timeout=remaining, after=play.last_speech_start_t,
                            where=lambda e: _answers(call, e, play.last_speech_start_t))
    except TimeoutError:
        # Judged by turns.analyse_call: a reply that started but has not finished still counts as a reply.
        play.error = f"no reply within {reply_timeout:.0f} s of the speech end"


def _answers(call: Caller, event: dict[str, Any], last_speech_start_t: float) -> bool:
    """A response to the turn's final words, not to a hesitation earlier in it."""
    speech_end = (event.get("response") or {}).get("metrics", {}).get("speech_end_ms")
    if speech_end is None:
        return False
    try:
        return call.server_time(speech_end) >= last_speech_start_t
    except RuntimeError:
        return True  # no shared clock: the first response after the last segment began is the best guess


def _alive(received: Received) -> bool:
    return bool(received.times) and time.monotonic() - received.times[-1] < DEAD_AFTER_S
