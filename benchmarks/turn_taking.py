"""The turn-taking report (issue 13), from the turn records the harness already keeps.

Per arm: turns grouped by the longest `pause_ms` segment in them ("complete" when none) with their false cut-offs
(turns with a false end of turn: a reply to the words before a pause); end-of-turn latency on complete turns
(client-side v2v, and the server's speech end → end-of-turn decision); commit rate; wasted-token ratio; and
cancellation latency, from the server's `generation.stopped` events (one per cancelled draft or reply: request →
its ASR, LM and decoder work stopped, and what the stop waited for). A cancellation at hang-up is not seen: its
event would follow the channel's close.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.client import RATE
from benchmarks.scenarios import Scenario
from benchmarks.summary import percentiles

COMPLETE = "complete"


def turn_pauses(scenario: Scenario) -> list[list[int]]:
    """Per turn of the scenario, its pause segments in ms."""
    return [[round(seg.samples.size * 1000 / RATE) for seg in turn.segments if seg.is_pause]
            for turn in scenario.turns]


def pause_group(pauses_ms: Iterable[int] | None) -> str:
    """The group a turn's figures fall in: its longest pause in ms, or "complete"."""
    pauses = list(pauses_ms or ())
    return str(max(pauses)) if pauses else COMPLETE


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def _dist(values: Iterable[float | None], qs: tuple[int, ...]) -> dict[str, Any]:
    d = percentiles(values, (*qs, 100))
    d["max"] = d.pop("p100")
    return d


def by_pause(turns: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Played turns by pause group ("complete" first, then by length): false cut-offs, drafts, v2v."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in turns:
        if "false_turn_ends" in t:  # played (an unplayed turn has only an error)
            groups.setdefault(pause_group(t.get("pauses_ms")), []).append(t)
    out = {}
    for key in sorted(groups, key=lambda k: -1 if k == COMPLETE else int(k)):
        ts = groups[key]
        cut = sum(1 for t in ts if t["false_turn_ends"] > 0)
        started = sum(t.get("drafts_started", 0) for t in ts)
        committed = sum(t.get("drafts_committed", 0) for t in ts)
        out[key] = {"turns": len(ts), "false_cutoffs": cut, "false_cutoff_rate": _rate(cut, len(ts)),
                    "false_turn_ends": sum(t["false_turn_ends"] for t in ts),
                    "drafts_started": started, "drafts_committed": committed,
                    "commit_rate": _rate(committed, started),
                    "v2v_ms": percentiles((t["v2v_ms"] for t in ts if t.get("ok")), (50, 90))}
    return out


def decision_ms(turn: dict[str, Any]) -> float | None:
    """Server clock: the user's speech end → the end-of-turn decision (a committed draft's commit)."""
    server = turn.get("server") or {}
    end, decided = server.get("speech_end_ms"), server.get("end_of_turn_decision_ms")
    if decided is None and turn.get("committed"):
        decided = server.get("commit_ms")
    return None if end is None or decided is None else round(decided - end, 1)


def end_of_turn(turns: list[dict[str, Any]]) -> dict[str, Any]:
    done = [t for t in turns if t.get("ok") and pause_group(t.get("pauses_ms")) == COMPLETE]
    return {"turns": len(done), "v2v_ms": _dist((t["v2v_ms"] for t in done), (50, 90)),
            "decision_ms": percentiles((decision_ms(t) for t in done), (50, 90))}


def cancellations(events: Iterable[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    """A call's `generation.stopped` events: one per cancelled draft or reply, with what the stop waited for."""
    return [{"ms": e["cancel_latency_ms"], "draft": bool(e.get("draft")), "waited_ms": e.get("waited_ms") or {}}
            for _, e in events if e.get("type") == "generation.stopped"]


def cancel_latency(stopped: list[dict[str, Any]]) -> dict[str, Any]:
    """Cancellation latency (request → the work stopped) pooled over the calls: all, drafts only, and the waits."""
    def waited(part: str) -> dict[str, Any]:
        return _dist((c["waited_ms"][part] for c in stopped if part in c["waited_ms"]), (50, 95))

    return {**_dist((c["ms"] for c in stopped), (50, 95)),
            "drafts": _dist((c["ms"] for c in stopped if c["draft"]), (50, 95)),
            "waited_asr": waited("asr"), "waited_lm_tts": waited("lm_tts")}


def arm_turn_taking(turns: list[dict[str, Any]], stopped: list[dict[str, Any]]) -> dict[str, Any]:
    started = sum(t.get("drafts_started", 0) for t in turns)
    committed = sum(t.get("drafts_committed", 0) for t in turns)
    wasted = sum(t.get("draft_tokens_wasted", 0) for t in turns)
    useful = sum(t.get("tokens", 0) for t in turns if t.get("ok"))
    return {
        "by_pause": by_pause(turns),
        "end_of_turn": end_of_turn(turns),
        "commit_rate": _rate(committed, started),
        "drafts": {"started": started, "committed": committed,
                   "discarded": sum(t.get("drafts_discarded", 0) for t in turns)},
        "wasted_token_ratio": _rate(wasted, wasted + useful) if wasted + useful else 0.0,
        "draft_tokens_wasted": wasted,
        "cancel_latency_ms": cancel_latency(stopped),
    }


def turn_taking(arms: dict[str, Any]) -> dict[str, Any]:
    """Arm name → its turn-taking figures (each call record's `cancellations` from `cancellations`)."""
    return {name: arm_turn_taking(arm["turns"], [c for call in arm.get("calls", [])
                                                 for c in call.get("cancellations", [])])
            for name, arm in arms.items()}
