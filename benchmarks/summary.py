"""Per-arm summaries of turn records: the numbers report.json promises (issue 4) and a few more."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchmarks.turns import MARKS, STAGES


def fmt(value: Any, digits: int = 0) -> str:
    """A figure for a report table: "–" where there is none."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def percentiles(values: Iterable[float | None], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float | int | None]:
    xs = np.asarray([v for v in values if v is not None], np.float64)
    out: dict[str, float | int | None] = {"n": int(xs.size)}
    for q in qs:
        out[f"p{q}"] = round(float(np.percentile(xs, q)), 1) if xs.size else None
    out["mean"] = round(float(xs.mean()), 1) if xs.size else None
    return out


def summarize_arm(turns: list[dict[str, Any]], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """`calls` are per-call dicts with at least `error` and `pacing` (whole-call frames/late)."""
    ok = [t for t in turns if t.get("ok")]
    committed = [t for t in ok if t.get("committed")]
    fresh = [t for t in ok if not t.get("committed")]
    started = sum(t.get("drafts_started", 0) for t in turns)
    n_committed = sum(t.get("drafts_committed", 0) for t in turns)
    wasted = sum(t.get("draft_tokens_wasted", 0) for t in turns)
    useful = sum(t.get("tokens", 0) for t in ok)
    frames = sum(c["pacing"]["frames"] for c in calls if c.get("pacing"))
    late = sum(c["pacing"]["late"] for c in calls if c.get("pacing"))
    bunched = sum(c["pacing"]["bunched"] for c in calls if c.get("pacing"))
    return {
        "v2v_ms": percentiles(t["v2v_ms"] for t in ok),
        "v2v_committed_ms": percentiles(t["v2v_ms"] for t in committed),
        "v2v_fresh_ms": percentiles(t["v2v_ms"] for t in fresh),
        "commit_rate": round(n_committed / started, 3) if started else None,
        "drafts": {"started": started, "committed": n_committed,
                   "discarded": sum(t.get("drafts_discarded", 0) for t in turns)},
        "saved_ms": percentiles((t.get("saved_ms") for t in committed), (50, 90)),
        "wasted_token_ratio": round(wasted / (wasted + useful), 3) if wasted + useful else 0.0,
        "draft_tokens_wasted": wasted,
        "late_frame_ratio": round(late / frames, 5) if frames else None,
        "frames": {"received": frames, "late": late, "bunched": bunched},
        "reply_late_frames": sum(t["pacing"]["late"] for t in ok if t.get("pacing")),
        "engine_inbound_ms": percentiles((t.get("engine_inbound_ms") for t in ok), (50, 95)),
        "engine_outbound_ms": percentiles((t.get("engine_outbound_ms") for t in ok), (50, 95)),
        # Outbound up to the first *audible* frame: adds whatever silence the decoder put before the speech.
        "outbound_audible_ms": percentiles((t.get("outbound_audible_ms") for t in ok), (50, 95)),
        "wire_transit_p99_ms": max((c["wire_transit_ms"]["p99"] for c in calls
                                    if c.get("wire_transit_ms") and c["wire_transit_ms"]["p99"] is not None),
                                   default=None),
        "stages_ms": {s: percentiles((t["stages_ms"][s] for t in ok if t.get("stages_ms")), (50, 90))["p50"]
                      for s in STAGES},
        "incomplete_replies": sum(1 for t in ok if t.get("reply_status") == "incomplete"),
        "vad_stop_ms": percentiles((t.get("vad_stop_ms") for t in ok), (50, 90)),
        "asr_ms": percentiles((t.get("asr_ms") for t in ok), (50, 90)),
        "lm_first_token_ms": percentiles((t.get("lm_first_token_ms") for t in ok), (50, 90)),
        "decoder_first_chunk_ms": percentiles((t.get("decoder_first_chunk_ms") for t in ok), (50, 90)),
        "to_wire_ms": percentiles((t.get("to_wire_ms") for t in ok), (50, 90)),
        "reply_ms": percentiles((t.get("reply_ms") for t in ok), (50, 90)),
        "draft_timer_late_ms": percentiles((t.get("draft_timer_late_ms") for t in ok), (50, 99)),
        "false_turn_ends": sum(t.get("false_turn_ends", 0) for t in turns),
        "from_speech_end_ms": {k: percentiles((t.get("from_speech_end_ms", {}).get(k) for t in ok), (50, 90, 95, 100))
                               for k in MARKS},
        "asr_final": {k: percentiles((t.get("asr_final", {}).get(k) for t in ok), (50, 95, 100))
                      for k in ("queued_ms", "work_ms", "decoded_audio_ms", "turn_audio_ms")},
        "wer": _wer(ok),
        "sessions": len(calls),
        "failed_sessions": sum(1 for c in calls if c.get("error")),
        "turns": len(turns),
        "failed_turns": len(turns) - len(ok),
    }


def _wer(turns: list[dict[str, Any]]) -> float | None:
    """Word errors over reference words, all turns with a reference transcript together."""
    scored = [t for t in turns if t.get("wer") is not None]
    words = sum(t["reference_words"] for t in scored)
    return round(sum(t["wer"] * t["reference_words"] for t in scored) / words, 4) if words else None


def paired_deltas(arms: dict[str, Any]) -> dict[str, Any]:
    """Per arm after the first: v2v minus the first arm's on the same (scenario, session, turn), and the same
    restricted to turns the first arm answered with a committed draft (what speculation is for)."""
    names = list(arms)
    if len(names) < 2:
        return {}

    def by_key(turns: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
        return {(t["scenario"], t["session"], t["turn"]): t for t in turns if t.get("ok")}

    first = by_key(arms[names[0]]["turns"])
    out = {}
    for name in names[1:]:
        other = by_key(arms[name]["turns"])
        keys = sorted(first.keys() & other.keys())
        deltas = [other[k]["v2v_ms"] - first[k]["v2v_ms"] for k in keys]
        committed = [other[k]["v2v_ms"] - first[k]["v2v_ms"] for k in keys if first[k].get("committed")]
        out[f"{name} - {names[0]}"] = {"v2v_delta_ms": percentiles(deltas, (50, 90)),
                                       "v2v_delta_where_first_committed_ms": percentiles(committed, (50, 90))}
    return out
