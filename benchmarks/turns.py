"""Per-turn measurements from a played call: client-side timings, server-side stages, engine overhead.

All times are put on the client's monotonic clock (same host: the server announces its clock origin), so the
client's marks (when the user's last speech frame was sent, when reply frames arrived) and the server's per-turn
timestamps (`response.done` metrics) can be subtracted directly.

The critical path after the user stops speaking is cut into stages that add up to the client-side v2v:

    inbound        client sent the last speech frame   → server received the last speech window
    silence        → end-of-turn decision  (the configured end_of_turn_ms, plus any timer lateness)
    asr            → transcript ready      (0 when a committed draft had it before the decision)
    lm             → LM first token        (likewise hidden by a draft)
    decoder        → first decoder chunk   (likewise)
    wire           → first audio handed to the transport
    outbound       → first reply audio energy received by the client

Engine-added latency (issue 4): inbound = last speech frame sent → end-of-turn decision − end_of_turn_ms;
outbound = decoder chunk ready (or released, for a held draft) → that audio received by the client.
"""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks.client import SPEECH_DBFS
from benchmarks.conversation import CallRecord, TurnPlay
from benchmarks.pacing import LATE_MS, pacing
from benchmarks.wer import word_error_rate

# Decoded Opus silence is digital zero (-120 dBFS here); anything above this is reply audio arriving.
AUDIBLE_DBFS = -100.0
STAGES = ("inbound", "silence", "asr", "lm", "decoder", "wire", "outbound")
# Cumulative marks from the user's speech end (client clock): when each stage's result existed, wherever it ran.
MARKS = ("transcript", "lm_first_token", "first_chunk", "first_audio_out", "first_audio_heard")


def analyse_call(rec: CallRecord, late_ms: float = LATE_MS) -> list[dict[str, Any]]:
    """One record per scenario turn; a turn without a measurable reply has `ok: False` and an `error`."""
    out = []
    for turn in rec.turns:
        base = {"scenario": rec.scenario, "session": rec.session, "turn": turn.index, "session_id": rec.session_id,
                "transcript": turn.transcript}
        if rec.server_clock_origin is None or not turn.speech_end_t:
            out.append({**base, "ok": False, "error": turn.error or rec.error or "the turn was not played"})
            continue
        record = {**base, **_analyse_turn(rec, turn, rec.server_clock_origin, late_ms)}
        if not record["ok"]:
            record["events"] = _event_log(rec, turn)
        out.append(record)
    return out


# Event fields worth keeping in a failed turn's log: enough to replay what the server decided, and when.
_LOGGED = ("item_id", "audio_start_ms", "audio_end_ms", "draft_id", "reason", "silence_ms", "transcript", "delta")


def _event_log(rec: CallRecord, turn: TurnPlay) -> list[dict[str, Any]]:
    """The events of a failed turn, timed in ms from the user's speech end (negative: before it)."""
    end = turn.next_start_t or rec.end_t
    log = []
    for t, e in rec.events:
        if turn.start_t - 0.5 <= t < end:
            entry: dict[str, Any] = {"ms": round((t - turn.speech_end_t) * 1000.0), "type": e.get("type")}
            entry.update({k: e[k] for k in _LOGGED if k in e})
            if e.get("type") == "response.done":
                entry["status"] = e["response"].get("status")
                entry["status_details"] = e["response"].get("status_details")
            if e.get("type") == "error":
                entry["error"] = e.get("error")
            log.append(entry)
    return log


def _analyse_turn(rec: CallRecord, turn: TurnPlay, origin: float, late_ms: float) -> dict[str, Any]:
    def st(ms: float | None) -> float | None:
        return None if ms is None else origin + ms / 1000.0

    window_end = turn.next_start_t or rec.end_t
    # A response belongs to the turn whose audio held the speech it answers (its speech_end_ms); one answering
    # speech before the turn's last segment answered a hesitation: a false end of turn.
    mine = []
    for t, e in rec.events:
        if e.get("type") != "response.done":
            continue
        speech_end = st(e["response"].get("metrics", {}).get("speech_end_ms"))
        if speech_end is not None and turn.start_t - 0.1 <= speech_end < window_end:
            mine.append((t, e["response"], speech_end))
    final = [(t, r) for t, r, se in mine if se >= turn.last_speech_start_t]
    premature = [r for _, r, se in mine if se < turn.last_speech_start_t]
    record: dict[str, Any] = {
        "ok": False, "error": turn.error,
        "false_turn_ends": len(premature),
        "drafts_started": sum(r["metrics"].get("drafts_started", 0) for _, r, _ in mine),
        "drafts_discarded": sum(r["metrics"].get("drafts_discarded", 0) for _, r, _ in mine),
        "draft_tokens_wasted": sum(r["metrics"].get("draft_tokens_wasted", 0) for _, r, _ in mine),
        "drafts_committed": sum(1 for _, r, _ in mine if r["metrics"].get("speculative")),
    }
    if not final:
        # A reply still going when the harness moved on (a long answer on a slow machine) has no metrics yet,
        # but its onset is the turn's v2v all the same.
        started = any(e.get("type") == "response.created" and turn.last_speech_start_t <= t < window_end
                      for t, e in rec.events)
        onset = _rise(rec, turn.speech_end_t, window_end, SPEECH_DBFS) if started else None
        if onset is None:
            record["error"] = ("the reply started but no audio came before the next turn" if started
                               else turn.error or "no response to the turn's final words")
            return record
        record.update({"ok": True, "error": None, "reply_status": "incomplete", "stages_ms": None,
                       "v2v_ms": round((onset - turn.speech_end_t) * 1000.0, 1),
                       "user_transcript": _user_transcript(rec, turn, window_end)})
        return record
    done_t, reply = final[-1]
    m = reply["metrics"]
    t0 = turn.speech_end_t
    onset = _rise(rec, t0, window_end, SPEECH_DBFS)
    audible = _rise(rec, t0, window_end, AUDIBLE_DBFS)
    record.update({
        "reply_status": reply.get("status"),
        "reply_text": reply.get("output_text", ""),
        "committed": bool(m.get("speculative")),
        "tokens": m.get("tokens", 0),
        "saved_ms": m.get("saved_ms"),
        "end_of_turn_ms": m.get("end_of_turn_ms"),
        "server": {k: m.get(k) for k in ("speech_end_ms", "draft_start_ms", "end_of_turn_decision_ms", "commit_ms",
                                         "transcript_ready_ms", "lm_first_token_ms", "first_audio_ready_ms",
                                         "first_audio_out_ms")},
        "user_transcript": _user_transcript(rec, turn, window_end),
    })
    if onset is None:
        record["error"] = "the reply had no audible audio"
        return record
    end_of_turn_s = (m.get("end_of_turn_ms") or 0) / 1000.0
    speech_end = st(m.get("speech_end_ms"))
    assert speech_end is not None
    if m.get("end_of_turn_decision_ms") is not None:
        decision, decision_source = st(m["end_of_turn_decision_ms"]), "decision"
    elif m.get("speculative") and m.get("commit_ms") is not None:
        decision, decision_source = st(m["commit_ms"]), "commit"
    else:
        # A fresh response is created only after the final transcript; the end-of-turn timer fired at its target.
        decision, decision_source = speech_end + end_of_turn_s, "timer_target"
    assert decision is not None
    ready = st(m.get("transcript_ready_ms"))
    token = st(m.get("lm_first_token_ms"))
    chunk = st(m.get("first_audio_ready_ms"))
    wire = st(m.get("first_audio_out_ms"))
    points = [t0, speech_end, decision]
    for stamp in (ready, token, chunk, wire):
        points.append(max(points[-1], stamp if stamp is not None else points[-1]))
    points.append(onset)
    stages = {name: round((b - a) * 1000.0, 1) for name, (a, b) in zip(STAGES, itertools.pairwise(points), strict=True)}
    release = max(chunk, decision) if chunk is not None else None
    outbound = _outbound_ms(rec, release, wire, audible)
    reply_end = rec.received.last_speech_before(min(window_end, done_t + 0.5)) or onset
    pace = pacing(rec.received.times, rec.received.pts, onset, reply_end + 0.02, late_ms)
    stopped = next((t for t, e in rec.events if e.get("type") == "input_audio_buffer.speech_stopped"
                    and t >= turn.last_speech_start_t), None)
    # How late the speculation timer fired: the controller's own clock, so this is event-loop/inbox delay.
    timer_late = [e["silence_ms"] - m["speculate_after_ms"] for t, e in rec.events
                  if e.get("type") == "speculation.started" and turn.start_t <= t < window_end
                  and e.get("silence_ms") is not None and m.get("speculate_after_ms") is not None]
    draft_start = st(m.get("draft_start_ms"))
    asr_from = draft_start if m.get("speculative") and draft_start is not None else decision
    record.update({
        "ok": True, "error": None,
        "v2v_ms": round((onset - t0) * 1000.0, 1),
        "reply_ms": round((reply_end - onset) * 1000.0 + 20.0, 1),
        "stages_ms": stages,
        "decision_source": decision_source,
        "engine_inbound_ms": round((decision - t0 - end_of_turn_s) * 1000.0, 1),
        # engine_inbound_ms in two parts: how late the server dated the speech end (VAD and energy refinement),
        # and how late the decision came after the silence it needed (inbox, timer and event-loop delay: load).
        "speech_end_dating_ms": round((speech_end - t0) * 1000.0, 1),
        "decision_late_ms": round((decision - speech_end - end_of_turn_s) * 1000.0, 1),
        "engine_outbound_ms": outbound,
        "outbound_audible_ms": _ms(release, audible),
        "vad_stop_ms": round((stopped - t0) * 1000.0, 1) if stopped is not None else None,
        "asr_ms": _ms(asr_from, ready),
        "lm_first_token_ms": _ms(ready, token),
        "decoder_first_chunk_ms": _ms(token, chunk),
        "to_wire_ms": _ms(release, wire),
        "pacing": pace.as_dict(),
        "draft_timer_late_ms": round(max(timer_late), 1) if timer_late else None,
        "from_speech_end_ms": {
            "transcript": _ms(t0, st(m.get("transcript_done_ms")) or ready), "lm_first_token": _ms(t0, token),
            "first_chunk": _ms(t0, chunk), "first_audio_out": _ms(t0, wire),
            "first_audio_heard": round((onset - t0) * 1000.0, 1)},
        "asr_final": m.get("asr") or {},
    })
    if turn.transcript and record.get("user_transcript") is not None:
        record["wer"] = round(word_error_rate(turn.transcript, record["user_transcript"]), 4)
        record["reference_words"] = len(turn.transcript.split())
    return record


SETTLE_S = 1.0


def call_pacing(rec: CallRecord, late_ms: float = LATE_MS) -> dict[str, float | int]:
    """Pacing of every frame the call received after its first second, silence included (the stream must never
    stall); the first second is connection start-up, whose first frames come late by construction."""
    if not rec.received.times:
        return pacing([], []).as_dict()
    return pacing(rec.received.times, rec.received.pts, rec.received.times[0] + SETTLE_S, late_ms=late_ms).as_dict()


def _outbound_ms(rec: CallRecord, release: float | None, wire: float | None, audible: float | None) -> float | None:
    """Decoder chunk ready (or released) → the packet carrying its first sample arrived at the client.

    The packet is found by time, not content, so silence the decoder put at the chunk's start does not count.
    Without RTP/RTCP timing (another transport) it falls back to the first audible frame.
    """
    if release is None:
        return None
    if rec.wire is not None and wire is not None:
        sent = rec.wire.packet_sent_at(wire, not_before=release)
        if sent is not None:
            return round((sent[1] - release) * 1000.0, 1)
    return _ms(release, audible)


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 1)


def _rise(rec: CallRecord, t0: float, t1: float, dbfs: float) -> float | None:
    """First frame in [t0, t1) louder than `dbfs` whose predecessor was not: a new sound, not the tail of one."""
    r = rec.received
    prev = float("-inf")
    for at, level in zip(r.times, r.levels, strict=True):
        if at >= t1:
            break
        if at >= t0 and level > dbfs >= prev:
            return at
        prev = level
    return None


def _user_transcript(rec: CallRecord, turn: TurnPlay, t1: float) -> str | None:
    found = None
    for t, e in rec.events:
        if e.get("type") == "conversation.item.input_audio_transcription.completed" and turn.start_t <= t < t1:
            found = e.get("transcript")
    return found
