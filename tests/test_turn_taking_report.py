"""The turn-taking report (issue 13) from synthetic turn records, and the mid-sentence pause corpus builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.turn_taking import (
    COMPLETE,
    by_pause,
    cancellations,
    pause_group,
    turn_taking,
)
from benchmarks.turn_taking_report import markdown_section, plot


def turn(pauses: list[int], false_ends: int = 0, v2v: float | None = 900.0, started: int = 1, committed: int = 1,
         wasted: int = 0, tokens: int = 30, decision: float | None = 700.0) -> dict:
    t = {"scenario": "s", "session": 0, "turn": 0, "pauses_ms": pauses, "false_turn_ends": false_ends,
         "drafts_started": started, "drafts_committed": committed, "drafts_discarded": started - committed,
         "draft_tokens_wasted": wasted, "ok": v2v is not None}
    if v2v is not None:
        t.update({"v2v_ms": v2v, "tokens": tokens, "committed": committed > 0,
                  "server": {"speech_end_ms": 1000.0, "end_of_turn_decision_ms": None if decision is None
                             else 1000.0 + decision, "commit_ms": 1000.0 + (decision or 0.0)}})
    return t


def synthetic_turns() -> list[dict]:
    return [
        turn([]), turn([], v2v=1100.0, decision=710.0), turn([], v2v=1500.0, decision=None, committed=0),
        turn([400], false_ends=1, started=3, committed=1, wasted=20), turn([400], false_ends=2, started=2),
        turn([400]), turn([400], v2v=None, false_ends=1),
        turn([600], false_ends=1), turn([600]),
        turn([1200]), turn([300, 1200]),
        {"scenario": "s", "session": 0, "turn": 9, "ok": False, "error": "the turn was not played"},
    ]


def test_pause_group_is_the_longest_pause() -> None:
    assert pause_group([]) == COMPLETE and pause_group(None) == COMPLETE
    assert pause_group([300, 1200, 600]) == "1200"


def test_false_cutoffs_are_counted_per_pause_length() -> None:
    groups = by_pause(synthetic_turns())
    assert list(groups) == [COMPLETE, "400", "600", "1200"]  # the unplayed turn is in none
    assert groups[COMPLETE]["turns"] == 3 and groups[COMPLETE]["false_cutoffs"] == 0
    g = groups["400"]
    assert (g["turns"], g["false_cutoffs"], g["false_cutoff_rate"], g["false_turn_ends"]) == (4, 3, 0.75, 4)
    assert (g["drafts_started"], g["drafts_committed"], g["commit_rate"]) == (7, 4, 0.571)
    assert g["v2v_ms"]["n"] == 3  # the failed turn counts for cut-offs, not for latency
    assert groups["600"]["false_cutoff_rate"] == 0.5
    assert groups["1200"]["turns"] == 2 and groups["1200"]["false_cutoff_rate"] == 0.0


def test_end_of_turn_commit_rate_and_wasted_tokens() -> None:
    arms = {"default": {"turns": synthetic_turns(), "calls": []}}
    tt = turn_taking(arms)["default"]
    e = tt["end_of_turn"]
    assert e["turns"] == 3
    assert (e["v2v_ms"]["p50"], e["v2v_ms"]["max"]) == (1100.0, 1500.0)
    # The fresh reply has no decision stamp: only the two measured decisions count.
    assert e["decision_ms"]["n"] == 2 and e["decision_ms"]["p50"] == 705.0
    assert tt["drafts"] == {"started": 14, "committed": 10, "discarded": 4}
    assert tt["commit_rate"] == round(10 / 14, 3)
    assert tt["wasted_token_ratio"] == round(20 / (20 + 30 * 10), 3)
    assert tt["cancel_latency_ms"]["n"] == 0


def test_cancel_latency_pools_every_calls_generation_stopped_events() -> None:
    def stopped(ms: float, draft: bool, waited: dict[str, float]) -> tuple[float, dict]:
        return (0.0, {"type": "generation.stopped", "cancel_latency_ms": ms, "draft": draft, "waited_ms": waited})

    call_a = cancellations([stopped(40.0, True, {"asr": 35.0, "lm_tts": 40.0}), (0.0, {"type": "response.done"})])
    call_b = cancellations([stopped(120.0, False, {"lm_tts": 120.0}), stopped(60.0, True, {"lm_tts": 60.0})])
    arms = {"default": {"turns": synthetic_turns(), "calls": [{"cancellations": call_a}, {"cancellations": call_b}]},
            "other": {"turns": [], "calls": [{}]}}
    tt = turn_taking(arms)
    c = tt["default"]["cancel_latency_ms"]
    assert (c["n"], c["p50"], c["max"]) == (3, 60.0, 120.0)
    assert c["drafts"]["n"] == 2 and c["drafts"]["max"] == 60.0
    assert c["waited_asr"]["n"] == 1 and c["waited_lm_tts"]["max"] == 120.0
    assert tt["other"]["cancel_latency_ms"]["n"] == 0


def test_section_and_plot(tmp_path: Path) -> None:
    turns = synthetic_turns()
    report = {"arms": {"default": {"turns": turns}}, "turn_taking": turn_taking({"default": {"turns": turns}})}
    text = "\n".join(markdown_section(report))
    assert "## Turn-taking" in text
    assert "| default | 400 ms pause | 4 | 3 | 0.75 |" in text
    assert "| default | complete sentence | 3 | 0 | 0.00 |" in text
    assert markdown_section({"arms": {}}) == []
    paths = plot(report, tmp_path)
    assert paths == [tmp_path / "turn_taking.png"] and paths[0].stat().st_size > 1000


def test_pause_corpus_is_a_valid_scenario_directory(tmp_path: Path) -> None:
    from benchmarks.corpus import human, pauses
    from benchmarks.scenarios import load_scenarios
    from models.assets import MissingModelError, model_path

    if not human.DATA.is_dir():
        pytest.skip("pocketsphinx-testdata is not installed")
    try:
        model_path("whisper-base")
    except MissingModelError:
        pytest.skip("whisper-base is not assembled")
    source = human.sentences()[1:5]  # the whole corpus takes about 1.5 min to check its cuts
    index = pauses.build(tmp_path, per_pause=1, source=source)
    scenarios = load_scenarios(tmp_path)  # validates every turn and WAV
    turns = [t for s in index["scenarios"] for t in s["turns"]]
    reference = {s.transcript for s in source}
    assert all(t["transcript"] in reference and t["after_ms"] == human.AFTER_MS for t in turns)
    split = [[seg["pause_ms"] for seg in t["segments"] if "pause_ms" in seg] for t in turns]
    assert sorted(p[0] for p in split if p) == sorted(pauses.PAUSES_MS)
    assert sum(1 for p in split if not p) == len(reference)  # every sentence whole, too
    for t, loaded in zip(turns, (lt for s in scenarios for lt in s.turns), strict=True):
        audio = [seg for seg in loaded.segments if not seg.is_pause]
        assert len(audio) == (2 if any("pause_ms" in seg for seg in t["segments"]) else 1)
    cuts = json.loads((tmp_path / "cuts.json").read_text())
    assert len(cuts) == len(pauses.PAUSES_MS) and all(c["before"] and c["after"] for c in cuts)
