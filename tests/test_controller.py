"""Deterministic tests of the turn-taking controller: a virtual clock and scripted VAD, tokenizer, LM and decoder.

The controller is pure (inputs carry `now`, outputs are effects), so a test is a script of inputs at chosen
times and assertions on the effects and events that come back. Real models are exercised by the call tests.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from models.interfaces import ToolCall, UserInput
from realtime import controller as ctl
from realtime.config import SessionConfig
from realtime.context import ContextManager
from realtime.endpointing import fused, silence_needed_ms, transcript_evidence
from realtime.tools import default_tools

# The silence rule, and every speech over a reply a barge-in; semantic ends and resumed turns have tests of their own.
SETTINGS = SessionConfig(speculate_after_ms=200, end_of_turn_ms=700, barge_in_ms=300, max_drafts_per_turn=3,
                         tool_timeout_ms=1000, filler_after_ms=400, tool_filler="One moment.",
                         turn_detection="silence", resume_window_ms=0)


def user(text: str) -> UserInput:
    return UserInput(text=text, content=text, key=" ".join(text.lower().strip("?.!").split()))


class Script:
    """Drives a controller and records everything it asks for."""

    def __init__(self, settings: SessionConfig = SETTINGS, transcript_scores: bool = False) -> None:
        self.context = ContextManager("You are a test.", 2000)
        self.c = ctl.Controller(settings, self.context, default_tools().specs, transcript_scores=transcript_scores)
        self.effects: list[ctl.Effect] = []
        self.now = 0.0

    def at(self, t: float, method: str, *args: Any) -> list[ctl.Effect]:
        assert t >= self.now, "the virtual clock only moves forward"
        self.now = t
        out = getattr(self.c, method)(t, *args)
        self.effects += out
        return out

    def run_until(self, t: float) -> None:
        """Advance the clock, firing every timer the controller asks for on the way."""
        while (deadline := self.c.next_deadline()) is not None and deadline <= t:
            self.at(max(deadline, self.now), "tick")
        self.at(t, "tick")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e.event for e in self.effects if isinstance(e, ctl.Send) and (kind is None or e.event["type"] == kind)]

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, cls)]

    def last(self, cls: type) -> Any:
        found = self.of(cls)
        assert found, f"no {cls.__name__} effect"
        return found[-1]

    # A few multi-step moves a user makes.
    def speak(self, start: float, end: float, start_sample: int, end_sample: int) -> None:
        self.at(start, "speech_started", start_sample)
        self.at(end, "speech_stopped", end, end_sample)

    def draft_transcribed(self, t: float, text: str) -> ctl.Generate:
        transcribe = self.last(ctl.Transcribe)
        self.at(t, "input_ready", transcribe.input_id, user(text))
        return self.last(ctl.Generate)

    def generate(self, t: float, gen_id: str, words: list[str], chunk_ms: float = 800.0) -> None:
        for i, word in enumerate(words):
            self.at(t + i, "lm_token", gen_id, word)
        self.at(t + len(words), "audio_ready", gen_id, "".join(words).strip(), chunk_ms)
        self.at(t + len(words) + 1, "generation_finished", gen_id, None)


def test_silence_below_thresholds_keeps_listening() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    assert s.c.state == ctl.State.PAUSED
    s.run_until(1199)
    assert s.c.state == ctl.State.PAUSED and not s.of(ctl.Transcribe)


def test_pause_starts_a_draft_then_end_of_turn_commits_it() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    assert s.c.state == ctl.State.DRAFTING
    started = s.events("speculation.started")[0]
    assert started["silence_ms"] == 200
    gen = s.draft_transcribed(1500, "What is the capital of France?")
    assert gen.speculative
    # The draft's prompt holds the user's words; the history does not.
    assert gen.messages[-1].content == "What is the capital of France?"
    assert gen.user_text == "What is the capital of France?"  # what the tool gate reads
    assert s.context.history == []
    s.generate(1550, gen.gen_id, ["Paris", " is", " the", " capital."])
    assert not s.of(ctl.ReleaseAudio), "a draft's audio never goes out before commit"
    assert not s.events("response.audio_transcript.delta")
    s.run_until(1700)
    assert s.c.state == ctl.State.RESPONDING
    assert s.last(ctl.ReleaseAudio).gen_id == gen.gen_id
    committed = s.events("speculation.committed")[0]
    assert committed["draft_id"] == started["draft_id"]
    assert s.events("response.audio_transcript.delta")[0]["delta"] == "Paris is the capital."
    assert [m.role for m in s.context.history] == ["user"]
    # Audio starts, plays out, the response completes.
    s.at(1701, "audio_started", gen.gen_id)
    s.at(2600, "audio_finished", gen.gen_id)
    assert s.c.state == ctl.State.LISTENING
    done = s.events("response.done")[0]["response"]
    assert done["status"] == "completed"
    m = done["metrics"]
    assert m["speculative"] and m["draft_start_ms"] == 1200 and m["commit_ms"] == 1700
    # The draft's first audio was ready 354 ms after it started (at 1554), before the commit: a fresh response
    # started at the commit would have needed those 354 ms again.
    assert m["saved_ms"] == 354 and m["speech_end_to_first_audio_ms"] == 701
    assert [(x.role, x.content) for x in s.context.history][-1] == ("assistant", "Paris is the capital.")
    assert s.c.stats.summary()["commit_rate"] == 1.0


def test_speech_resuming_discards_the_draft_promptly() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, "What is the")
    s.at(1350, "lm_token", gen.gen_id, "The")
    s.at(1360, "lm_token", gen.gen_id, " what")
    out = s.at(1400, "speech_started", 22400)
    assert ctl.CancelGeneration(gen.gen_id) in out
    discarded = s.events("speculation.discarded")[0]
    assert discarded["reason"] == "speech_resumed" and discarded["tokens_wasted"] == 2
    assert s.c.state == ctl.State.USER_SPEAKING
    # The work stops later; that delay is the cancellation latency.
    s.at(1430, "generation_finished", gen.gen_id, None)
    assert s.c.stats.cancel_latency_ms == [30] and s.c.stats.draft_cancel_latency_ms == [30]
    # A late token from the cancelled draft changes nothing.
    assert s.at(1431, "lm_token", gen.gen_id, "x") == []
    # The same turn goes on: second pause, second draft, committed.
    s.at(2500, "speech_stopped", 2500, 40000)
    s.run_until(2700)
    gen2 = s.draft_transcribed(2900, "What is the capital of France?")
    s.run_until(3200)
    assert s.last(ctl.ReleaseAudio).gen_id == gen2.gen_id
    st = s.c.stats.summary()
    assert (st["drafts_started"], st["drafts_discarded"], st["drafts_committed"]) == (2, 1, 1)
    assert st["commit_rate"] == 0.5
    assert s.context.history[0].content == "What is the capital of France?", "only the final input enters context"


def test_draft_cap_falls_back_to_a_fresh_response() -> None:
    s = Script(replace(SETTINGS, max_drafts_per_turn=1))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    s.at(1300, "speech_started", 20000)
    s.at(2000, "speech_stopped", 2000, 32000)
    s.run_until(2650)
    assert s.c.state == ctl.State.PAUSED, "no second draft once the cap is reached"
    s.run_until(2700)
    transcribe = s.last(ctl.Transcribe)
    assert transcribe.gen_id is None and s.c.state == ctl.State.RESPONDING
    s.at(3100, "input_ready", transcribe.input_id, user("Tell me a joke."))
    gen = s.last(ctl.Generate)
    assert not gen.speculative
    assert s.events("response.created")[-1]["response"]["speculative"] is False


def test_speculation_off_never_drafts() -> None:
    s = Script(replace(SETTINGS, speculation=False))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1699)
    assert not s.events("speculation.started")
    s.run_until(1700)
    assert s.last(ctl.Transcribe).gen_id is None


def test_commit_compares_inputs_when_the_audio_changed_under_the_draft() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1400, "Turn on the lights.")
    # The listener extended the turn (a stack whose draft input was partial): end sample moved, no new speech.
    s.c.turn.end_sample = 16500  # type: ignore[union-attr]
    s.run_until(1700)
    final = s.last(ctl.Transcribe)
    assert final.gen_id is None and final.end_sample == 16500
    # Re-transcription adds punctuation/case only: same normalised key, the draft is committed.
    s.at(1900, "input_ready", final.input_id, UserInput("turn on the lights", "turn on the lights",
                                                        "turn on the lights"))
    assert s.last(ctl.ReleaseAudio).gen_id == gen.gen_id


def test_commit_on_mismatch_discards_and_generates_afresh() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1400, "Turn on the lights.")
    s.at(1450, "lm_token", gen.gen_id, "Sure")
    s.c.turn.end_sample = 17000  # type: ignore[union-attr]
    s.run_until(1700)
    final = s.last(ctl.Transcribe)
    s.at(1900, "input_ready", final.input_id, user("Turn on the lights in the kitchen."))
    assert ctl.CancelGeneration(gen.gen_id) in s.effects
    assert s.events("speculation.discarded")[0]["reason"] == "input_changed"
    fresh = s.last(ctl.Generate)
    assert fresh.gen_id != gen.gen_id and not fresh.speculative
    assert fresh.messages[-1].content == "Turn on the lights in the kitchen."
    assert not s.of(ctl.ReleaseAudio)


def test_empty_transcript_ends_the_turn_without_a_response() -> None:
    s = Script()
    s.speak(0, 300, 0, 4800)
    s.run_until(500)
    s.at(600, "input_ready", s.last(ctl.Transcribe).input_id, user(""))
    s.run_until(1000)
    assert s.c.state == ctl.State.LISTENING
    assert not s.events("response.created") and not s.of(ctl.Generate)
    assert s.context.history == []


def test_barge_in_stops_audio_and_truncates_to_what_was_heard() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, "Tell me about octopuses.")
    for i, w in enumerate(["Octopuses", " have", " three", " hearts."]):
        s.at(1400 + i, "lm_token", gen.gen_id, w)
    s.at(1410, "audio_ready", gen.gen_id, "Octopuses have three hearts.", 2000.0)
    s.run_until(1700)
    s.at(1710, "audio_started", gen.gen_id)
    # The user talks over the reply: short speech is ignored (echo, "mm-hm")...
    s.at(2000, "speech_started", 40000)
    s.at(2100, "speech_stopped", 2100, 41600)
    s.run_until(2500)
    assert s.c.state == ctl.State.RESPONDING and not s.of(ctl.StopPlayout)
    # ...speech of barge_in_ms stops it.
    s.at(2600, "speech_started", 48000)
    s.run_until(2899)
    assert not s.of(ctl.StopPlayout)
    s.run_until(2900)
    stop = s.last(ctl.StopPlayout)
    assert stop.gen_id == gen.gen_id and ctl.CancelGeneration(gen.gen_id) in s.effects
    assert s.c.state == ctl.State.USER_SPEAKING
    assert s.last(ctl.OpenTurn).start_sample == 48000, "the interrupting speech starts the next turn"
    # The session reports what was played: 1000 of 2000 ms of "Octopuses have three hearts." = 2 of 4 words.
    s.at(2901, "playout_stopped", gen.gen_id, 1000.0)
    truncate = s.events("conversation.item.truncate")[0]
    assert truncate["audio_end_ms"] == 1000 and truncate["transcript"] == "Octopuses have"
    assert s.context.history[-1].content == "Octopuses have"
    done = s.events("response.done")[0]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    assert s.c.stats.barge_ins == 1
    # Stopping a committed reply counts as a cancellation, not as a discarded draft's.
    s.at(2950, "generation_finished", gen.gen_id, None)
    assert s.c.stats.cancel_latency_ms == [50] and s.c.stats.draft_cancel_latency_ms == []


def test_speech_right_after_end_of_turn_reopens_the_turn() -> None:
    s = Script(replace(SETTINGS, speculation=False))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1700)
    final = s.last(ctl.Transcribe)
    # The user goes on before the transcript is back: not a barge-in on a response, the same turn continues.
    s.at(1800, "speech_started", 28800)
    s.run_until(2100)
    assert s.c.state == ctl.State.USER_SPEAKING
    s.at(2150, "input_ready", final.input_id, user("I want to"))
    assert not s.of(ctl.Generate), "the stale final transcript is ignored"


def test_client_cancel_stops_the_response() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, "Hello")
    s.run_until(1700)
    s.at(1800, "cancel_response")
    assert s.last(ctl.StopPlayout).gen_id == gen.gen_id
    assert s.c.state == ctl.State.LISTENING
    assert s.events("response.done")[0]["response"]["status_details"]["reason"] == "client_cancelled"


def committed_response(s: Script, text: str = "What time is it in Tokyo?") -> ctl.Generate:
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, text)
    return gen


def test_tools_never_run_for_drafts_and_run_after_commit() -> None:
    s = Script()
    gen = committed_response(s)
    call = ToolCall("call_1", "get_current_time", {"timezone": "Asia/Tokyo"})
    s.at(1400, "tool_requested", gen.gen_id, call)
    assert not s.of(ctl.RunTool), "a draft's tool call waits for the commit"
    assert s.context.history == []
    s.run_until(1700)
    assert s.last(ctl.RunTool).call == call
    assert s.events("response.function_call.started")[0]["name"] == "get_current_time"
    s.at(1750, "tool_finished", "call_1", '{"time": "09:00"}')
    roles = [m.role for m in s.context.history]
    assert roles == ["user", "assistant", "tool"]
    assert s.context.history[1].tool_calls == (call,)
    cont = s.last(ctl.Generate)
    assert cont.gen_id == gen.gen_id and cont.messages[-1].role == "tool"
    assert s.events("response.function_call.completed")[0]["timed_out"] is False


def test_discarded_draft_never_runs_its_tool() -> None:
    s = Script()
    gen = committed_response(s)
    s.at(1400, "tool_requested", gen.gen_id, ToolCall("call_1", "calculate", {"expression": "2+2"}))
    s.at(1500, "speech_started", 24000)
    s.at(2000, "speech_stopped", 2000, 32000)
    s.run_until(2200)
    s.draft_transcribed(2300, "What is two plus two plus two?")
    s.run_until(2700)
    assert not s.of(ctl.RunTool)


def test_tool_timeout_and_filler() -> None:
    s = Script()
    gen = committed_response(s)
    s.run_until(1700)
    s.at(1710, "tool_requested", gen.gen_id, ToolCall("call_9", "get_current_time", {"timezone": "UTC"}))
    s.run_until(2109)
    assert not s.of(ctl.Speak)
    s.run_until(2110)
    assert s.last(ctl.Speak).text == "One moment.", "a filler once the tool runs longer than filler_after_ms"
    s.run_until(2710)
    assert ctl.CancelTool("call_9") in s.effects
    completed = s.events("response.function_call.completed")[0]
    assert completed["timed_out"] is True and "timed out" in completed["output"]
    assert s.context.history[-1].role == "tool" and "timed out" in s.context.history[-1].content
    # A late result of the timed-out tool is ignored.
    assert s.at(2800, "tool_finished", "call_9", "late") == []


def test_barge_in_during_a_tool_call_closes_it_in_context() -> None:
    s = Script()
    gen = committed_response(s)
    s.run_until(1700)
    s.at(1710, "tool_requested", gen.gen_id, ToolCall("call_2", "calculate", {"expression": "1/3"}))
    s.at(1800, "speech_started", 28000)
    s.run_until(2100)
    assert ctl.CancelTool("call_2") in s.effects
    roles = [m.role for m in s.context.history]
    assert roles[-2:] == ["assistant", "tool"] and "interrupted" in s.context.history[-1].content


def test_settings_update_changes_thresholds() -> None:
    s = Script()
    s.at(0, "update_settings", replace(SETTINGS, end_of_turn_ms=400, speculate_after_ms=100))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1100)
    assert s.events("speculation.started")
    s.run_until(1400)
    assert s.c.state == ctl.State.RESPONDING


@pytest.mark.parametrize("state_path", ["listening", "user_speaking", "paused", "drafting", "responding"])
def test_every_state_is_reachable_and_documented(state_path: str) -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md").read_text()
    assert ctl.State(state_path).name in doc, f"docs/ARCHITECTURE.md must describe {state_path}"


# --- client-driven turns (OpenAI Realtime: turn_detection null, conversation.item.create, response.create) ------


def test_manual_turns_ignore_the_vad_and_answer_what_the_client_committed() -> None:
    s = Script(replace(SETTINGS, manual_turns=True))
    s.speak(0, 1000, 0, 16000)
    s.run_until(3000)
    assert s.c.state == ctl.State.LISTENING and not s.of(ctl.Transcribe), "no turn without a commit"
    s.at(3000, "commit_input", 0, 40000)
    transcribe = s.last(ctl.Transcribe)
    assert (transcribe.start_sample, transcribe.end_sample) == (0, 40000)
    committed = s.events("input_audio_buffer.committed")[0]
    # The client asks for the response before the transcript exists: it is answered once the words are in.
    s.at(3010, "request_response")
    assert not s.of(ctl.Generate)
    s.at(3200, "input_ready", transcribe.input_id, user("What is the capital of France?"))
    done = s.events("conversation.item.input_audio_transcription.completed")[0]
    assert done["item_id"] == committed["item_id"] and done["audio_ms"] == 2500
    gen = s.last(ctl.Generate)
    assert not gen.speculative and gen.messages[-1].content == "What is the capital of France?"
    assert s.context.history[-1].item_id == committed["item_id"]
    s.at(3300, "request_response")
    assert s.events("error")[-1]["error"]["code"] == "conversation_already_has_active_response"
    s.generate(3400, gen.gen_id, ["Paris."])
    s.at(3500, "audio_finished", gen.gen_id)
    assert s.events("response.done")[0]["response"]["status"] == "completed"
    assert s.events("response.done")[0]["response"]["usage"]["output_tokens"] == 1


def test_typed_text_then_response_create_and_strict_cancel() -> None:
    s = Script()
    s.at(0, "cancel_response", True)
    assert s.events("error")[0]["error"]["code"] == "response_cancel_not_active"
    item = s.c.add_text(10, "Tell me a story.")
    s.at(20, "request_response")
    gen = s.last(ctl.Generate)
    assert gen.messages[-1].content == "Tell me a story." and s.context.history[0].item_id == item
    created = s.events("response.created")[0]
    assert created["item_id"].startswith("item_")
    s.at(30, "cancel_response", True)
    assert s.events("response.done")[0]["response"]["status"] == "cancelled"
    assert s.c.state == ctl.State.LISTENING


def test_a_client_tool_call_ends_the_response_and_its_output_continues_the_conversation() -> None:
    s = Script()
    s.c.client_tools = frozenset({"lookup_order"})
    s.c.add_text(0, "Where is order 42?")
    s.at(10, "request_response")
    gen = s.last(ctl.Generate)
    call = ToolCall("call_7", "lookup_order", {"order": 42})
    s.at(20, "tool_requested", gen.gen_id, call)
    assert not s.of(ctl.RunTool), "the client runs its own tools"
    assert s.last(ctl.EndGeneration).gen_id == gen.gen_id
    assert s.events("response.function_call.requested")[0]["arguments"] == {"order": 42}
    s.at(30, "generation_finished", gen.gen_id, None)
    s.at(40, "audio_finished", gen.gen_id)
    done = s.events("response.done")[0]["response"]
    assert done["status"] == "completed" and done["function_call"]["call_id"] == "call_7"
    assert s.context.history[-1].tool_calls == (call,)
    assert not s.c.add_tool_output(50, "call_unknown", "{}")
    assert s.c.add_tool_output(50, "call_7", '{"status": "shipped"}')
    s.at(60, "request_response")
    assert s.last(ctl.Generate).messages[-1].role == "tool"


def test_create_response_off_keeps_the_turn_without_answering() -> None:
    s = Script(replace(SETTINGS, create_response=False))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1800)
    assert not s.of(ctl.Generate) and s.c.draft is None, "no drafts when nothing will be answered"
    s.at(1900, "input_ready", s.last(ctl.Transcribe).input_id, user("Remember the number seven."))
    assert s.context.history[-1].content == "Remember the number seven."
    assert s.events("input_audio_buffer.committed") and s.c.state == ctl.State.LISTENING
    assert not s.of(ctl.Generate)


def test_response_create_mid_pause_drops_the_draft_and_the_uncommitted_turn() -> None:
    s = Script()
    s.speak(0, 1000, 0, 16000)
    s.run_until(1250)
    draft = s.c.draft
    assert draft is not None
    s.at(1300, "request_response")
    assert s.last(ctl.CancelGeneration).gen_id == draft.id and s.of(ctl.CloseTurn)
    assert s.events("speculation.discarded")[0]["reason"] == "response_requested"
    assert s.c.state == ctl.State.RESPONDING and s.c.turn is None
    s.run_until(3000)  # the old turn's end-of-turn timer must not fire into the new response
    assert len(s.events("response.created")) == 1


# --- semantic end of turn and false ends (realtime/endpointing.py) ----------------------------------------------

SEMANTIC = replace(SETTINGS, turn_detection="semantic", eagerness="auto", max_end_of_turn_ms=2500)


def test_silence_needed_follows_the_score_and_the_eagerness() -> None:
    assert silence_needed_ms(SETTINGS, 0.99) == 700, "the silence rule ignores scores"
    assert silence_needed_ms(SEMANTIC, None) == 700, "no score yet: the silence rule"
    assert silence_needed_ms(SEMANTIC, 0.9) == 300
    assert silence_needed_ms(replace(SEMANTIC, eagerness="high"), 0.55) == 200
    assert silence_needed_ms(replace(SEMANTIC, eagerness="low"), 0.8) > 700, "low eagerness doubts a 0.8"
    # Below the threshold the wait grows from end_of_turn_ms to the cap as the score falls.
    assert silence_needed_ms(SEMANTIC, 0.6999) == pytest.approx(700, abs=1)
    assert silence_needed_ms(SEMANTIC, 0.35) == pytest.approx(1600)
    assert silence_needed_ms(SEMANTIC, 0.0) == 2500
    assert silence_needed_ms(replace(SEMANTIC, eagerness="high"), 0.0) == 1500


def test_a_finished_sounding_pause_ends_the_turn_after_a_short_silence() -> None:
    s = Script(SEMANTIC)
    s.speak(0, 1000, 0, 16000)
    assert s.last(ctl.ScoreTurn).end_sample == 16000, "every pause is scored"
    s.run_until(1200)
    gen = s.draft_transcribed(1210, "What is the capital of France?")
    s.at(1150 + 100, "turn_scored", 16000, 0.92)
    scored = s.events("turn.scored")[0]
    assert scored["probability"] == 0.92 and scored["silence_needed_ms"] == 300
    s.run_until(1299)
    assert s.c.state == ctl.State.DRAFTING
    s.run_until(1300)
    assert s.c.state == ctl.State.RESPONDING and s.last(ctl.ReleaseAudio).gen_id == gen.gen_id
    s.generate(1310, gen.gen_id, ["Paris."])
    s.at(1320, "audio_started", gen.gen_id)
    s.at(2000, "audio_finished", gen.gen_id)
    m = s.events("response.done")[0]["response"]["metrics"]
    assert m["end_of_turn_decision_ms"] == 1300 and m["end_of_turn_ms"] == 300
    assert m["end_of_turn_probability"] == 0.92


def test_an_unfinished_sounding_pause_waits_and_the_caller_goes_on() -> None:
    s = Script(SEMANTIC)
    s.speak(0, 1000, 0, 16000)  # "Press 4 to mark ..."
    s.at(1150, "turn_scored", 16000, 0.05)
    assert s.events("turn.scored")[0]["silence_needed_ms"] == 2371
    s.run_until(1200)
    s.draft_transcribed(1300, "Press 4 to mark")
    s.run_until(2000)  # 1000 ms of silence: the silence rule would have answered at 1700
    assert s.c.state == ctl.State.DRAFTING and not s.events("response.created")
    s.at(2000, "speech_started", 32000)  # "... this message as urgent"
    assert s.events("speculation.discarded")[0]["reason"] == "speech_resumed"
    s.at(3000, "speech_stopped", 3000, 48000)
    s.at(3010, "turn_scored", 16000, 0.99)  # late, for the earlier pause: ignored
    assert len(s.events("turn.scored")) == 1
    s.run_until(3699)
    assert s.c.state == ctl.State.DRAFTING, "no score for this pause yet: the silence rule holds"
    s.at(3700, "turn_scored", 48000, None)  # the model failed: silence decides
    s.run_until(3700)
    assert s.c.state == ctl.State.RESPONDING


def test_the_transcript_score_joins_the_audio_score() -> None:
    assert transcript_evidence(0.001) == 0.0 and transcript_evidence(0.01) == pytest.approx(0.5)
    assert transcript_evidence(0.3) == 1.0 and transcript_evidence(0.0) == 0.0
    # Measured pairs (benchmarks/README.md): read prosody the audio model calls unfinished, a cut it calls finished.
    assert silence_needed_ms(SEMANTIC, 0.07) > 2000
    assert silence_needed_ms(SEMANTIC, 0.07, 0.282) < 1200, "the words read complete: a much shorter wait"
    assert silence_needed_ms(SEMANTIC, 0.95) == 300
    assert silence_needed_ms(SEMANTIC, 0.83, 0.003) > 1000, "'Unless to be rather |' reads cut off: wait"
    assert fused(0.99, 0.011) >= 0.7, "a short answer ('ten of clubs') still ends soon"
    # On its way: a finished-sounding pause waits as silence detection would, a doubtful one as before.
    assert silence_needed_ms(SEMANTIC, 0.95, transcript_pending=True) == 700
    assert silence_needed_ms(SEMANTIC, 0.2, transcript_pending=True) == silence_needed_ms(SEMANTIC, 0.2)


def test_a_finished_sounding_pause_waits_for_the_drafts_reading_of_the_words() -> None:
    s = Script(SEMANTIC, transcript_scores=True)
    s.speak(0, 1000, 0, 16000)
    s.at(1050, "turn_scored", 16000, 0.95)
    s.run_until(1200)
    gen = s.draft_transcribed(1290, "What is the capital of France?")
    assert gen.score_turn and gen.speculative, "the draft asks the LM to read the words first"
    s.run_until(1450)
    assert s.c.state == ctl.State.DRAFTING, "300 ms of silence, but the words are not read yet"
    s.at(1460, "transcript_scored", gen.gen_id, 0.31)
    assert s.c.state == ctl.State.RESPONDING and s.last(ctl.ReleaseAudio).gen_id == gen.gen_id
    scored = s.events("turn.scored")[-1]
    assert scored["audio_probability"] == 0.95 and scored["transcript_probability"] == 0.31
    assert scored["probability"] == pytest.approx(0.975) and scored["silence_needed_ms"] == 300
    s.generate(1470, gen.gen_id, ["Paris."])
    s.at(1480, "audio_started", gen.gen_id)
    s.at(2000, "audio_finished", gen.gen_id)
    m = s.events("response.done")[0]["response"]["metrics"]
    assert m["end_of_turn_decision_ms"] == 1460 and m["end_of_turn_transcript_probability"] == 0.31


def test_words_that_read_cut_off_hold_a_finished_sounding_pause() -> None:
    s = Script(SEMANTIC, transcript_scores=True)
    s.speak(0, 1000, 0, 16000)  # "Unless to be rather |" (Smart Turn 0.83)
    s.at(1050, "turn_scored", 16000, 0.83)
    s.run_until(1200)
    gen = s.draft_transcribed(1290, "Unless to be rather.")
    s.at(1450, "transcript_scored", gen.gen_id, 0.003)
    assert s.events("turn.scored")[-1]["silence_needed_ms"] > 1000
    s.run_until(1900)  # a 900 ms mid-sentence pause: not cut off
    assert s.c.state == ctl.State.DRAFTING and not s.events("response.created")
    s.at(1900, "speech_started", 30000)  # "... cold-hearted and rather selfish ..."
    assert s.events("speculation.discarded")[0]["reason"] == "speech_resumed"


def test_without_a_reading_of_the_words_the_silence_rule_bounds_the_wait() -> None:
    s = Script(SEMANTIC, transcript_scores=True)
    s.speak(0, 1000, 0, 16000)
    s.at(1050, "turn_scored", 16000, 0.95)
    s.run_until(1200)
    s.draft_transcribed(1290, "What is the capital of France?")
    s.run_until(1699)  # the LM is busy with another call: no reading yet
    assert s.c.state == ctl.State.DRAFTING
    s.run_until(1700)
    assert s.c.state == ctl.State.RESPONDING, "end_of_turn_ms of silence ends it, as without the transcript"


def test_speech_soon_after_the_commit_drops_the_reply_and_merges_the_turn() -> None:
    s = Script(replace(SETTINGS, resume_window_ms=1000))
    s.context.add_user(user("Hi."), item_id="item_earlier")
    s.c._last_item_id = "item_earlier"
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, "Press 4 to mark")
    s.generate(1310, gen.gen_id, ["Marked."])
    s.run_until(1700)
    first_item = s.events("input_audio_buffer.committed")[0]["item_id"]
    assert [m.content for m in s.context.history] == ["Hi.", "Press 4 to mark"]
    s.at(1710, "audio_started", gen.gen_id)
    s.at(2400, "speech_started", 38400)  # 700 ms after the commit: "... this message as urgent"
    s.run_until(2700)
    assert s.last(ctl.StopPlayout).gen_id == gen.gen_id and ctl.CancelGeneration(gen.gen_id) in s.effects
    s.at(2701, "playout_stopped", gen.gen_id, 990.0)
    assert [m.content for m in s.context.history] == ["Hi."], "neither the first part nor the reply stays"
    assert not s.events("conversation.item.truncate")
    done = s.events("response.done")[0]["response"]
    assert {e["item_id"] for e in s.events("conversation.item.deleted")} == {first_item, done["item_id"]}
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_resumed"
    resumed = s.events("turn.resumed")[0]
    assert resumed["merged_item_id"] == first_item and resumed["after_commit_ms"] == 700
    # The turn goes on from its first word: the next transcription covers both parts.
    assert s.c.state == ctl.State.USER_SPEAKING and s.last(ctl.OpenTurn).start_sample == 0
    s.at(3500, "speech_stopped", 3500, 56000)
    s.run_until(4200)
    final = s.last(ctl.Transcribe)
    assert final.end_sample == 56000
    s.at(4300, "input_ready", final.input_id, user("Press 4 to mark this message as urgent"))
    assert [m.content for m in s.context.history] == ["Hi.", "Press 4 to mark this message as urgent"]
    committed = s.events("input_audio_buffer.committed")[-1]
    assert committed["item_id"] == resumed["item_id"] and committed["previous_item_id"] == "item_earlier"
    assert s.c.stats.turns_resumed == 1 and s.c.stats.barge_ins == 0


def test_speech_after_the_resume_window_is_a_barge_in() -> None:
    s = Script(replace(SETTINGS, resume_window_ms=1000))
    s.speak(0, 1000, 0, 16000)
    s.run_until(1200)
    gen = s.draft_transcribed(1300, "Tell me a story.")
    s.generate(1310, gen.gen_id, ["Once", " upon", " a", " time."], chunk_ms=4000)
    s.run_until(1700)
    s.at(1710, "audio_started", gen.gen_id)
    s.at(2800, "speech_started", 44800)
    s.run_until(3100)
    assert s.c.stats.barge_ins == 1 and s.c.stats.turns_resumed == 0
    assert s.last(ctl.OpenTurn).start_sample == 44800
