"""The turn-taking controller: speculative drafts, commit/discard, barge-in, tools.

A pure state machine. Every input is a method call carrying `now` (milliseconds on the session's clock); every
method returns the effects the session must carry out (start a transcription, start or cancel generation,
release or stop audio, run a tool, send an event). It never does I/O, never awaits and never reads a clock,
so tests drive it with a virtual clock and scripted inputs, and the session stays a thin executor.

States (docs/ARCHITECTURE.md draws them):

    LISTENING      nobody speaks; nothing is being generated
    USER_SPEAKING  the user is speaking (a turn is open)
    PAUSED         the user stopped less than end_of_turn_ms ago; no draft runs
    DRAFTING       paused, and a speculative draft runs: transcription, LM and decoder, but no audio out
    RESPONDING     the turn ended; the committed response generates and/or plays

Transitions:

    LISTENING     --speech_started-->                          USER_SPEAKING  (opens a turn)
    USER_SPEAKING --speech_stopped-->                          PAUSED
    PAUSED        --speech_started-->                          USER_SPEAKING  (same turn)
    PAUSED        --silence >= speculate_after_ms, drafts left-> DRAFTING     (speculation.started)
    DRAFTING      --speech_started-->                          USER_SPEAKING  (speculation.discarded)
    PAUSED        --silence >= needed-->                       RESPONDING     (fresh response)
    DRAFTING      --silence >= needed, same input-->           RESPONDING     (speculation.committed)
    DRAFTING      --silence >= needed, input differs-->        RESPONDING     (discarded, fresh response)
    PAUSED/DRAFTING --end of turn, empty transcript-->         LISTENING
    RESPONDING    --audio played and generation done-->        LISTENING      (response.done)
    RESPONDING    --speech for >= barge_in_ms-->               USER_SPEAKING  (barge-in: audio stopped, context
                                                                               truncated to what was heard)
    RESPONDING    --speech for >= barge_in_ms, within          USER_SPEAKING  (false end of turn: the reply is
                    resume_window_ms of the commit-->                         dropped, both parts are one turn)
    RESPONDING    --response.cancel from the client-->         LISTENING

The silence a pause needs ("needed") is end_of_turn_ms, or with semantic turn detection what the turn's score
asks for (realtime/endpointing.py): at each speech stop the controller asks for a score (`ScoreTurn`) and the
session hands it back (`turn_scored`). Where the LM can score the transcript too (`transcript_scores`), the
draft's generation asks for it (`Generate.score_turn`) and the session hands it back before the draft's first
token (`transcript_scored`); until then a finished-sounding pause needs end_of_turn_ms.

Client-driven turns (OpenAI Realtime's `turn_detection: null`, `conversation.item.create`, `response.create`):

    with manual_turns the VAD opens no turn: commit_input() transcribes the audio span the client committed
    into the history; add_text() adds a typed user message
    LISTENING     --request_response(), no input being transcribed-->   RESPONDING  (fresh response)
    LISTENING     --request_response(), an input being transcribed-->   LISTENING   (answered once it is in)
    RESPONDING    --the LM calls a client-run tool-->                   (the response ends when its audio has
                                                                         played; add_tool_output() + a new
                                                                         request_response() continue)
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from models.interfaces import Message, Role, ToolCall, ToolSpec, UserInput
from realtime import events
from realtime.config import SessionConfig
from realtime.context import ContextManager
from realtime.endpointing import fused, silence_needed_ms
from realtime.sentences import heard_prefix


class State(StrEnum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    PAUSED = "paused"
    DRAFTING = "drafting"
    RESPONDING = "responding"


# --- effects: what the session must do --------------------------------------------------------------------


@dataclass(frozen=True)
class OpenTurn:
    """The listener starts collecting a user turn at this sample (it adds its own pre-roll)."""

    start_sample: int


@dataclass(frozen=True)
class CloseTurn:
    pass


@dataclass(frozen=True)
class Transcribe:
    """Produce the user input for the open turn's audio up to `end_sample`; `gen_id` owns the work, if any.

    With `start_sample` the span is exactly [start_sample, end_sample) (a client's manual commit), not the turn.
    """

    input_id: str
    end_sample: int
    gen_id: str | None = None
    start_sample: int | None = None


@dataclass(frozen=True)
class ScoreTurn:
    """Score how likely it is that the caller has finished, from the open turn's audio up to `end_sample`."""

    end_sample: int


@dataclass(frozen=True)
class Generate:
    """Run the LM on `messages` and synthesize what it says; audio is held until ReleaseAudio if speculative.

    A second Generate for the same `gen_id` continues that generation after a tool call.
    """

    gen_id: str
    messages: list[Message]
    speculative: bool
    user_text: str = ""  # the transcript of the turn being answered (the prompt may hold audio codes instead)
    score_turn: bool = False  # first say how likely it is that the user's message is complete (a draft's)


@dataclass(frozen=True)
class EndGeneration:
    """Stop the LM where it is (it asked for a tool the client runs); what was said still plays."""

    gen_id: str


@dataclass(frozen=True)
class CancelGeneration:
    gen_id: str


@dataclass(frozen=True)
class ReleaseAudio:
    gen_id: str


@dataclass(frozen=True)
class StopPlayout:
    gen_id: str


@dataclass(frozen=True)
class RunTool:
    gen_id: str
    call: ToolCall


@dataclass(frozen=True)
class CancelTool:
    call_id: str


@dataclass(frozen=True)
class Speak:
    """Synthesize a fixed text into the response's audio (tool filler)."""

    gen_id: str
    text: str


@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


@dataclass(frozen=True)
class Prefill:
    """A hint: the history changed; while the user thinks, an LM may cache this prompt prefix."""

    messages: list[Message]


Effect = (
    OpenTurn | CloseTurn | Transcribe | ScoreTurn | Generate | EndGeneration | CancelGeneration | ReleaseAudio
    | StopPlayout | RunTool | CancelTool | Speak | Send | Prefill
)


# --- bookkeeping ---------------------------------------------------------------------------------------------


@dataclass
class Turn:
    item_id: str
    start_sample: int
    speech_started_ms: float
    end_sample: int = 0
    speech_end_ms: float | None = None
    drafts: int = 0
    discarded: int = 0
    wasted_tokens: int = 0
    final_input_id: str | None = None
    ended_ms: float | None = None  # the end-of-turn decision
    # The semantic score of the pause at `end_sample` (None inside: no model); unset until it is in.
    score: tuple[int, float | None] | None = None
    # The LM's end-of-message probability for the transcript up to `end_sample`, from the draft.
    transcript_score: tuple[int, float] | None = None
    previous_item_id: str | None = None  # the conversation item before this turn's, once it is in the history
    respond: bool = True  # False: the turn only enters the history (create_response off)


@dataclass
class PendingTool:
    call: ToolCall
    started_ms: float
    deadline_ms: float
    filler_sent: bool = False


@dataclass
class Gen:
    """One generation: a draft (speculative until committed) or a fresh response."""

    id: str
    input_id: str
    end_sample: int
    started_ms: float
    speculative: bool
    response_id: str
    item_id: str
    input: UserInput | None = None
    committed_ms: float | None = None
    input_ready_ms: float | None = None
    first_token_ms: float | None = None
    first_audio_ready_ms: float | None = None
    first_audio_out_ms: float | None = None
    tokens: int = 0
    # Text of the current LM segment (since the last tool call), and what was synthesized: (text, ms, in_context).
    segment_text: str = ""
    pieces: list[tuple[str, float, bool]] = field(default_factory=list)
    segment_first_piece: int = 0
    full_text: str = ""
    lm_done: bool = False
    audio_done: bool = False
    waiting_tool: ToolCall | None = None
    tool: PendingTool | None = None
    client_call: ToolCall | None = None  # a call the client runs: the response ends with it
    prompt_tokens: int = 0
    score_turn: bool = False  # a draft that reads the transcript's turn score before answering
    cancel_requested_ms: float | None = None
    dropped: bool = False  # a false end of turn: nothing of it enters the history

    @property
    def committed(self) -> bool:
        return self.committed_ms is not None


@dataclass
class Stats:
    drafts_started: int = 0
    drafts_committed: int = 0
    drafts_discarded: int = 0
    responses: int = 0
    barge_ins: int = 0
    turns_resumed: int = 0  # replies dropped because the caller went on (false ends of turn)
    saved_ms: list[float] = field(default_factory=list)
    tokens_total: int = 0
    tokens_wasted: int = 0
    cancel_latency_ms: list[float] = field(default_factory=list)
    draft_cancel_latency_ms: list[float] = field(default_factory=list)  # the discarded drafts' share of the above
    voice_to_voice_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def dist(xs: list[float]) -> dict[str, float | int | None]:
            return {
                "n": len(xs),
                "mean": round(statistics.fmean(xs), 1) if xs else None,
                "p50": round(statistics.median(xs), 1) if xs else None,
                "p90": round(statistics.quantiles(xs, n=10, method="inclusive")[-1], 1) if len(xs) > 1 else
                (round(xs[0], 1) if xs else None),
                "max": round(max(xs), 1) if xs else None,
            }

        return {
            "responses": self.responses,
            "drafts_started": self.drafts_started,
            "drafts_committed": self.drafts_committed,
            "drafts_discarded": self.drafts_discarded,
            "commit_rate": round(self.drafts_committed / self.drafts_started, 3) if self.drafts_started else None,
            "saved_ms": dist(self.saved_ms),
            "tokens_total": self.tokens_total,
            "tokens_wasted": self.tokens_wasted,
            "wasted_token_ratio": round(self.tokens_wasted / self.tokens_total, 3) if self.tokens_total else 0.0,
            "cancel_latency_ms": dist(self.cancel_latency_ms),
            "draft_cancel_latency_ms": dist(self.draft_cancel_latency_ms),
            "voice_to_voice_ms": dist(self.voice_to_voice_ms),
            "barge_ins": self.barge_ins,
            "turns_resumed": self.turns_resumed,
        }


# --- the controller ------------------------------------------------------------------------------------------


class Controller:
    def __init__(
        self,
        settings: SessionConfig,
        context: ContextManager,
        tools: list[ToolSpec],
        normalize: Callable[[str], str] = lambda s: s,
        transcript_scores: bool = False,
    ) -> None:
        self.settings = settings
        # The LM scores the end of turn from the transcript (ModelStack.transcript_turn).
        self.transcript_scores = transcript_scores
        self.context = context
        self.tools = tools
        self.normalize = normalize
        self.state = State.LISTENING
        self.stats = Stats()
        self.turn: Turn | None = None
        self.draft: Gen | None = None
        self.response: Gen | None = None
        self._gens: dict[str, Gen] = {}  # every generation whose work may still be running
        self._ids = itertools.count(1)
        # Barge-in candidate: speech that started while responding, not yet long enough to count.
        self._barge_start: tuple[float, int] | None = None
        # Client-driven turns: committed audio being transcribed (input id -> item id), in commit order.
        self._manual_inputs: dict[str, tuple[str, float]] = {}  # input id -> (item id, audio ms)
        self._response_requested = False
        self.client_tools: frozenset[str] = frozenset()  # tool names the client runs (OpenAI Realtime `tools`)
        self._client_calls: dict[str, ToolCall] = {}
        self._last_item_id: str | None = None
        self._out: list[Effect] = []

    # --- inputs ----------------------------------------------------------------------------------------------

    def speech_started(self, now: float, start_sample: int) -> list[Effect]:
        if self.settings.manual_turns:
            return []  # the client decides when a turn ends
        if self.state == State.LISTENING:
            self._open_turn(now, start_sample)
        elif self.state in (State.PAUSED, State.DRAFTING):
            if self.draft is not None:
                self._discard(self.draft, now, "speech_resumed")
            self._set(State.USER_SPEAKING)
            assert self.turn is not None
            self.turn.speech_end_ms = None
            self._send("input_audio_buffer.speech_started", item_id=self.turn.item_id, audio_start_ms=now,
                       audio_start_sample=self.turn.start_sample)
        elif self.state == State.RESPONDING and self._barge_start is None and self.settings.interrupt_response:
            self._barge_start = (now, start_sample)
            self._check_barge_in(now)
        return self._flush()

    def speech_stopped(self, now: float, speech_end_ms: float, end_sample: int) -> list[Effect]:
        if self.state == State.USER_SPEAKING and not self.settings.manual_turns:
            assert self.turn is not None
            self.turn.speech_end_ms = speech_end_ms
            self.turn.end_sample = end_sample
            self._set(State.PAUSED)
            self._send("input_audio_buffer.speech_stopped", item_id=self.turn.item_id, audio_end_ms=speech_end_ms,
                       audio_end_sample=end_sample)
            if self.settings.turn_detection == "semantic" and self.settings.create_response:
                self._emit(ScoreTurn(end_sample))
            self._timers(now)
        elif self.state == State.RESPONDING and self._barge_start is not None:
            # Too short to be a barge-in: echo, a cough or a back-channel "mm-hm". The reply goes on.
            self._barge_start = None
        return self._flush()

    def turn_scored(self, now: float, end_sample: int, probability: float | None) -> list[Effect]:
        """The semantic score of the pause at `end_sample` (None: no model, or it failed)."""
        turn = self.turn
        if turn is None or turn.end_sample != end_sample or self.state not in (State.PAUSED, State.DRAFTING):
            return []  # the caller spoke again: that pause is no longer the one to decide
        turn.score = (end_sample, probability)
        self._send_scored(turn, now)
        self._timers(now)
        return self._flush()

    def transcript_scored(self, now: float, gen_id: str, probability: float) -> list[Effect]:
        """The LM's end-of-message probability for the draft `gen_id`'s transcript (realtime/endpointing.py)."""
        turn = self.turn
        gen = self._gens.get(gen_id)
        if (turn is None or gen is None or gen is not self.draft or gen.end_sample != turn.end_sample
                or self.state not in (State.PAUSED, State.DRAFTING)):
            return []  # committed, discarded or the caller spoke again: the decision no longer waits for it
        turn.transcript_score = (turn.end_sample, probability)
        self._send_scored(turn, now)
        self._timers(now)
        return self._flush()

    def tick(self, now: float) -> list[Effect]:
        self._timers(now)
        return self._flush()

    def input_ready(self, now: float, input_id: str, user_input: UserInput) -> list[Effect]:
        if input_id in self._manual_inputs:
            self._manual_input(now, input_id, user_input)
            return self._flush()
        turn = self.turn
        if turn is not None and input_id == turn.final_input_id:
            self._final_input(now, user_input)
            return self._flush()
        gen = next((g for g in self._gens.values() if g.input_id == input_id), None)
        if gen is None or gen.input is not None or gen.cancel_requested_ms is not None:
            return self._flush()
        gen.input = user_input
        gen.input_ready_ms = now
        if not gen.committed:
            if user_input.key:
                # A draft's prompt is built from the history plus this input; the history itself is untouched.
                self._generate(gen, True, user_input.text, current=user_input)
        elif not user_input.key:
            # Committed before its transcript was ready, and nothing intelligible was said.
            self._finish_response(gen, now, "cancelled", reason="empty_input")
            self._set(State.LISTENING)
        else:
            self._user_turn_to_context(user_input)
            self._generate(gen, False, user_input.text)
        return self._flush()

    def lm_token(self, now: float, gen_id: str, text: str) -> list[Effect]:
        gen = self._gens.get(gen_id)
        if gen is None or gen.cancel_requested_ms is not None:
            return []
        if gen.first_token_ms is None:
            gen.first_token_ms = now
        gen.tokens += 1
        gen.segment_text += text
        gen.full_text += text
        if gen.committed:
            self._send("response.audio_transcript.delta", response_id=gen.response_id, item_id=gen.item_id, delta=text)
        return self._flush()

    def audio_ready(
        self, now: float, gen_id: str, text: str, duration_ms: float, in_context: bool = True
    ) -> list[Effect]:
        """A decoder chunk exists (held for a draft). `text` is empty for a continuation of the same piece."""
        gen = self._gens.get(gen_id)
        if gen is None:
            return []
        if gen.first_audio_ready_ms is None:
            gen.first_audio_ready_ms = now
        if text or not gen.pieces:
            gen.pieces.append((text, duration_ms, in_context))
        else:
            last_text, last_ms, last_ctx = gen.pieces[-1]
            gen.pieces[-1] = (last_text, last_ms + duration_ms, last_ctx)
        return []

    def audio_started(self, now: float, gen_id: str) -> list[Effect]:
        """The first frame of this generation's audio left for the wire."""
        gen = self._gens.get(gen_id)
        if gen is not None and gen.first_audio_out_ms is None:
            gen.first_audio_out_ms = now
        return []

    def tool_requested(self, now: float, gen_id: str, call: ToolCall) -> list[Effect]:
        gen = self._gens.get(gen_id)
        if gen is None or gen.cancel_requested_ms is not None:
            return []
        gen.waiting_tool = call
        if gen.committed:
            self._start_tool(gen, call, now)
        # A draft's tool call waits: tools never run for uncommitted drafts.
        return self._flush()

    def tool_finished(self, now: float, call_id: str, result: str) -> list[Effect]:
        gen = self.response
        if gen is None or gen.tool is None or gen.tool.call.id != call_id:
            return []  # late result of a cancelled or timed-out tool
        self._tool_done(gen, now, result, timed_out=False)
        return self._flush()

    def generation_finished(self, now: float, gen_id: str, error: str | None = None,
                            waited_ms: dict[str, float] | None = None) -> list[Effect]:
        """The generation's work has ended; for a cancelled one, `waited_ms` says what the stop waited for."""
        gen = self._gens.get(gen_id)
        if gen is None:
            return []
        if gen.cancel_requested_ms is not None:
            # The work has actually stopped: that is the cancellation latency the brief asks us to measure.
            latency = now - gen.cancel_requested_ms
            draft = gen.speculative and gen.committed_ms is None
            self.stats.cancel_latency_ms.append(latency)
            if draft:
                self.stats.draft_cancel_latency_ms.append(latency)
            del self._gens[gen_id]
            self._send("generation.stopped", gen_id=gen_id, response_id=gen.response_id, draft=draft,
                       cancel_latency_ms=round(latency, 1),
                       waited_ms={k: round(v, 1) for k, v in (waited_ms or {}).items()})
            return self._flush()
        gen.lm_done = True
        if error:
            self._send_error("server_error", f"generation failed: {error}")
        if gen is self.response:
            self._maybe_done(now)
        return self._flush()

    def audio_finished(self, now: float, gen_id: str) -> list[Effect]:
        """Everything this generation queued has been played."""
        gen = self._gens.get(gen_id)
        if gen is not None:
            gen.audio_done = True
            if gen is self.response:
                self._maybe_done(now)
        return self._flush()

    def playout_stopped(self, now: float, gen_id: str, played_ms: float) -> list[Effect]:
        """After StopPlayout: how much of this generation's audio the user heard."""
        gen = self._gens.get(gen_id)
        if gen is None or gen.dropped:
            return []
        segment = gen.pieces[gen.segment_first_piece :]
        before = sum(ms for _, ms, _ in gen.pieces[: gen.segment_first_piece])
        heard = heard_prefix([(t if ctx else "", ms) for t, ms, ctx in segment], max(0.0, played_ms - before))
        if heard:
            self.context.add_assistant(heard, item_id=gen.item_id)
            self._last_item_id = gen.item_id
        self._send(
            "conversation.item.truncate", item_id=gen.item_id, content_index=0, audio_end_ms=round(played_ms),
            transcript=heard,
        )
        return self._flush()

    def update_settings(self, now: float, settings: SessionConfig) -> list[Effect]:
        self.settings = settings
        self.context.instructions = settings.instructions
        self.context.budget_tokens = settings.context_tokens
        return []

    def cancel_response(self, now: float, strict: bool = False, event_id: str | None = None) -> list[Effect]:
        """Stop the current response; with `strict`, having none to stop is an error (OpenAI Realtime's rule)."""
        if self.response is not None:
            self._interrupt(self.response, now, "cancelled", reason="client_cancelled")
            self._set(State.LISTENING)
        elif self._response_requested:
            self._response_requested = False
        elif strict:
            self._send_error("invalid_request_error", "there is no response in progress to cancel",
                             code="response_cancel_not_active", event_id=event_id)
        return self._flush()

    def commit_input(self, now: float, start_sample: int, end_sample: int) -> list[Effect]:
        """The client committed the audio it sent in [start_sample, end_sample) as one user turn (manual turns)."""
        item_id = self._id("item")
        input_id = self._id("input")
        self._manual_inputs[input_id] = (item_id, (end_sample - start_sample) / 16.0)
        self._send("input_audio_buffer.committed", item_id=item_id, previous_item_id=self._last_item_id)
        self._last_item_id = item_id
        self._emit(Transcribe(input_id, end_sample, start_sample=start_sample))
        return self._flush()

    def add_text(self, now: float, text: str, role: Role = "user", item_id: str = "") -> str:
        """A typed message (conversation.item.create); returns its item id. Answered by request_response."""
        item_id = item_id or self._id("item")
        if role == "user":
            self.context.add_user(UserInput(text, text, self.normalize(text)), item_id=item_id)
        elif role == "assistant":
            self.context.add_assistant(text, item_id=item_id)
        else:
            self.context.add_note(role, text, item_id=item_id)
        self._last_item_id = item_id
        return item_id

    def awaits_tool_output(self, call_id: str) -> bool:
        return call_id in self._client_calls

    def add_tool_output(self, now: float, call_id: str, output: str) -> bool:
        """The result of a client-run tool call; False if no such call was made."""
        call = self._client_calls.pop(call_id, None)
        if call is None:
            return False
        self.context.add_tool_result(call, output)
        return True

    def request_response(self, now: float, event_id: str | None = None) -> list[Effect]:
        """The client asks for a response to the conversation as it stands (response.create)."""
        if self.response is not None or self.state == State.RESPONDING or self._response_requested:
            self._send_error("invalid_request_error", "a response is already in progress; cancel it first",
                             code="conversation_already_has_active_response", event_id=event_id)
        elif self._manual_inputs:
            self._response_requested = True  # answered once the committed audio is in the history
        else:
            self._respond(now)
        return self._flush()

    def close(self, now: float) -> list[Effect]:
        for gen in list(self._gens.values()):
            if gen.cancel_requested_ms is None:
                self._cancel_work(gen, now)
        return self._flush()

    def next_deadline(self) -> float | None:
        """When tick() must next be called (the session sleeps until then or the next input)."""
        s = self.settings
        times: list[float] = []
        turn = self.turn
        if self.state in (State.PAUSED, State.DRAFTING) and turn is not None and turn.speech_end_ms is not None:
            if self._may_speculate():
                times.append(turn.speech_end_ms + s.speculate_after_ms)
            times.append(turn.speech_end_ms + self._silence_needed(turn))
        if self._barge_start is not None:
            times.append(self._barge_start[0] + s.barge_in_ms)
        if self.response is not None and self.response.tool is not None:
            tool = self.response.tool
            times.append(tool.deadline_ms)
            if not tool.filler_sent and s.tool_filler:
                times.append(tool.started_ms + s.filler_after_ms)
        return min(times) if times else None

    # --- transitions -----------------------------------------------------------------------------------------

    def _manual_input(self, now: float, input_id: str, user_input: UserInput) -> None:
        item_id, audio_ms = self._manual_inputs.pop(input_id)
        if user_input.text.strip():
            self.context.add_user(user_input, item_id=item_id)
        self._send("conversation.item.input_audio_transcription.completed", item_id=item_id,
                   transcript=user_input.text, audio_ms=round(audio_ms))
        if self._response_requested and not self._manual_inputs:
            self._response_requested = False
            self._respond(now)

    def _respond(self, now: float) -> None:
        """A response the client asked for: no turn, no draft; it answers whatever the history holds."""
        if self.draft is not None:
            self._discard(self.draft, now, "response_requested")
        if self.turn is not None:
            # Speech not yet committed as a turn is dropped: the client chose to be answered now.
            self._emit(CloseTurn())
            self.turn = None
        gen = self._new_gen(now, 0, speculative=False)
        gen.committed_ms = now
        self.response = gen
        self._set(State.RESPONDING)
        self._send("response.created", response={"id": gen.response_id, "status": "in_progress",
                                                  "speculative": False}, item_id=gen.item_id)
        last_user = next((m.content for m in reversed(self.context.history) if m.role == "user"), "")
        self._generate(gen, False, last_user)

    def _open_turn(self, now: float, start_sample: int) -> None:
        self.turn = Turn(item_id=self._id("item"), start_sample=start_sample, speech_started_ms=now)
        self._emit(OpenTurn(start_sample))
        self._set(State.USER_SPEAKING)
        self._send("input_audio_buffer.speech_started", item_id=self.turn.item_id, audio_start_ms=now)

    def _may_speculate(self) -> bool:
        turn = self.turn
        return (
            self.state == State.PAUSED
            and self.settings.speculation
            and self.settings.create_response
            and turn is not None
            and turn.drafts < self.settings.max_drafts_per_turn
        )

    def _timers(self, now: float) -> None:
        s = self.settings
        turn = self.turn
        if self.state in (State.PAUSED, State.DRAFTING) and turn is not None and turn.speech_end_ms is not None:
            silence = now - turn.speech_end_ms
            if silence >= self._silence_needed(turn):
                self._end_of_turn(now)
            elif silence >= s.speculate_after_ms and self._may_speculate():
                self._start_draft(now)
        self._check_barge_in(now)
        self._check_tool(now)

    @staticmethod
    def _probability(turn: Turn) -> float | None:
        """The semantic score of the turn's current pause; None before it is in, or without a model."""
        score = turn.score
        return score[1] if score is not None and score[0] == turn.end_sample else None

    @staticmethod
    def _transcript_probability(turn: Turn) -> float | None:
        score = turn.transcript_score
        return score[1] if score is not None and score[0] == turn.end_sample else None

    def _transcript_pending(self, turn: Turn) -> bool:
        """The running draft will say how finished the transcript reads, and has not yet."""
        draft = self.draft
        return (draft is not None and draft.score_turn and draft.end_sample == turn.end_sample
                and draft.cancel_requested_ms is None and not draft.lm_done
                and self._transcript_probability(turn) is None)

    def _send_scored(self, turn: Turn, now: float) -> None:
        """`turn.scored`: the pause's score as the decision now uses it, once the audio model's is in."""
        audio = self._probability(turn)
        if audio is None:
            return  # the silence rule decides until then
        words = self._transcript_probability(turn)
        extra = {} if words is None else {"audio_probability": round(audio, 3),
                                          "transcript_probability": round(words, 4)}
        self._send("turn.scored", item_id=turn.item_id, probability=round(fused(audio, words), 3), **extra,
                   silence_needed_ms=round(self._silence_needed(turn)), scored_ms=now,
                   silence_ms=round(now - turn.speech_end_ms, 1) if turn.speech_end_ms is not None else None)

    def _silence_needed(self, turn: Turn) -> float:
        return silence_needed_ms(self.settings, self._probability(turn), self._transcript_probability(turn),
                                 self._transcript_pending(turn))

    def _start_draft(self, now: float) -> None:
        turn = self.turn
        assert turn is not None and turn.speech_end_ms is not None
        gen = self._new_gen(now, turn.end_sample, speculative=True)
        gen.score_turn = self.transcript_scores and self.settings.turn_detection == "semantic"
        turn.drafts += 1
        self.draft = gen
        self.stats.drafts_started += 1
        self._set(State.DRAFTING)
        self._emit(Transcribe(gen.input_id, turn.end_sample, gen.id))
        self._send(
            "speculation.started", draft_id=gen.id, item_id=turn.item_id, speech_end_ms=turn.speech_end_ms,
            started_ms=now, silence_ms=round(now - turn.speech_end_ms, 1),
        )

    def _discard(self, gen: Gen, now: float, reason: str) -> None:
        turn = self.turn
        self._cancel_work(gen, now)
        self.stats.drafts_discarded += 1
        self.stats.tokens_wasted += gen.tokens
        self.stats.tokens_total += gen.tokens
        if turn is not None:
            turn.discarded += 1
            turn.wasted_tokens += gen.tokens
        self._send(
            "speculation.discarded", draft_id=gen.id, reason=reason, discarded_ms=now,
            age_ms=round(now - gen.started_ms, 1), tokens_wasted=gen.tokens,
            audio_ms_wasted=round(sum(ms for _, ms, _ in gen.pieces), 1),
        )
        if self.draft is gen:
            self.draft = None

    def _end_of_turn(self, now: float) -> None:
        turn = self.turn
        assert turn is not None
        turn.ended_ms = now
        draft = self.draft
        if not self.settings.create_response:
            turn.respond = False
        elif draft is not None and draft.end_sample == turn.end_sample:
            if draft.input is not None and not draft.input.key:
                self._discard(draft, now, "empty_input")
                self._finish_empty_turn(now)
            else:
                # Same audio, so the same input: the draft *is* the response.
                self._commit(draft, now)
            return
        # The input may differ from the draft's (or there is no draft): the final input decides.
        turn.final_input_id = self._id("input")
        self._set(State.RESPONDING)
        self._emit(Transcribe(turn.final_input_id, turn.end_sample))

    def _final_input(self, now: float, user_input: UserInput) -> None:
        turn = self.turn
        assert turn is not None
        turn.final_input_id = None
        draft = self.draft
        if not turn.respond:
            if user_input.key:
                self._user_turn_to_context(user_input)
            self._finish_empty_turn(now)
            return
        if draft is not None and draft.input is not None and draft.input.key == user_input.key:
            self._commit(draft, now)
            return
        if draft is not None:
            self._discard(draft, now, "input_changed")
        if not user_input.key:
            self._finish_empty_turn(now)
            return
        gen = self._new_gen(now, turn.end_sample, speculative=False)
        gen.input = user_input
        gen.input_ready_ms = now
        self._start_response(gen, now)
        self._generate(gen, False, user_input.text)

    def _commit(self, gen: Gen, now: float) -> None:
        self.draft = None
        self.stats.drafts_committed += 1
        self._start_response(gen, now)
        self._send(
            "speculation.committed", draft_id=gen.id, response_id=gen.response_id, committed_ms=now,
            draft_age_ms=round(now - gen.started_ms, 1), tokens_ready=gen.tokens,
            audio_ready_ms=round(sum(ms for _, ms, _ in gen.pieces), 1),
        )
        self._emit(ReleaseAudio(gen.id))
        if gen.full_text:
            self._send("response.audio_transcript.delta", response_id=gen.response_id, item_id=gen.item_id,
                       delta=gen.full_text)
        if gen.waiting_tool is not None:
            self._start_tool(gen, gen.waiting_tool, now)

    def _start_response(self, gen: Gen, now: float) -> None:
        """The turn is over and `gen` answers it: the user's words enter the context, the response starts."""
        turn = self.turn
        assert turn is not None
        gen.committed_ms = now
        self.response = gen
        self._set(State.RESPONDING)
        self._emit(CloseTurn())
        if gen.input is not None:
            self._user_turn_to_context(gen.input)
        self._send("response.created", response={"id": gen.response_id, "status": "in_progress",
                                                  "speculative": gen.speculative}, item_id=gen.item_id)

    def _user_turn_to_context(self, user_input: UserInput) -> None:
        turn = self.turn
        assert turn is not None
        self.context.add_user(user_input, item_id=turn.item_id)
        self._send("input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=self._last_item_id)
        turn.previous_item_id = self._last_item_id
        self._last_item_id = turn.item_id
        self._send("conversation.item.input_audio_transcription.completed", item_id=turn.item_id,
                   transcript=user_input.text, audio_ms=round(max(0, turn.end_sample - turn.start_sample) / 16.0))

    def _finish_empty_turn(self, now: float) -> None:
        """Nothing intelligible was said: no response, back to listening."""
        self._emit(CloseTurn())
        self.turn = None
        self._set(State.LISTENING)

    def _maybe_done(self, now: float) -> None:
        gen = self.response
        if gen is None or not gen.lm_done or not gen.audio_done or gen.tool is not None:
            return
        if gen.client_call is not None:
            self.context.add_assistant(gen.segment_text.strip(), tool_calls=(gen.client_call,), item_id=gen.item_id)
        elif gen.segment_text.strip():
            self.context.add_assistant(gen.segment_text.strip(), item_id=gen.item_id)
        self._last_item_id = gen.item_id
        self._finish_response(gen, now, "completed")
        self._set(State.LISTENING)
        self._emit(Prefill(self.context.messages_for(None)))

    def _check_barge_in(self, now: float) -> None:
        if self._barge_start is None or self.state != State.RESPONDING:
            return
        started, sample = self._barge_start
        if now - started < self.settings.barge_in_ms:
            return
        self._barge_start = None
        gen = self.response
        turn = self.turn
        if gen is None and turn is not None:
            # The turn ended but no response exists yet (final transcription running): the user was not done.
            turn.final_input_id = None
            turn.speech_end_ms = None
            if self.draft is not None:
                self._discard(self.draft, now, "speech_resumed")
            self._set(State.USER_SPEAKING)
            self._send("input_audio_buffer.speech_started", item_id=turn.item_id, audio_start_ms=started)
            return
        if gen is not None and turn is not None and self._resumes(gen, started):
            self._resume_turn(gen, turn, now, started)
            return
        self.stats.barge_ins += 1
        if gen is not None:
            self._interrupt(gen, now, "cancelled", reason="turn_detected")
        # The interrupting speech is the start of the next user turn.
        self.turn = None
        self._open_turn(started, sample)

    def _resumes(self, gen: Gen, speech_start: float) -> bool:
        """Speech this soon after the commit continues the caller's turn: the end of turn was false."""
        window = self.settings.resume_window_ms
        return (
            window > 0 and gen.committed_ms is not None and speech_start - gen.committed_ms <= window
            # A reply that ran a tool changed the history beyond its own words; it stands, and this is a barge-in.
            and gen.tool is None and gen.client_call is None and gen.segment_first_piece == 0
        )

    def _resume_turn(self, gen: Gen, turn: Turn, now: float, speech_start: float) -> None:
        """Drop the reply and the turn it answered from the history; the caller's turn goes on from its start."""
        self.stats.turns_resumed += 1
        gen.dropped = True
        self._interrupt(gen, now, "cancelled", reason="turn_resumed")
        for item_id in (turn.item_id, gen.item_id):  # the caller's first part, and the reply (never stored)
            self.context.delete(item_id)
            self._send("conversation.item.deleted", item_id=item_id)
        if self._last_item_id == turn.item_id:
            self._last_item_id = turn.previous_item_id
        merged = Turn(item_id=self._id("item"), start_sample=turn.start_sample,
                      speech_started_ms=turn.speech_started_ms)
        self.turn = merged
        self._emit(OpenTurn(turn.start_sample))
        self._set(State.USER_SPEAKING)
        self._send("turn.resumed", item_id=merged.item_id, merged_item_id=turn.item_id,
                   response_id=gen.response_id, resumed_ms=speech_start,
                   after_commit_ms=round(speech_start - (gen.committed_ms or speech_start), 1))
        self._send("input_audio_buffer.speech_started", item_id=merged.item_id, audio_start_ms=speech_start,
                   audio_start_sample=turn.start_sample)

    def _interrupt(self, gen: Gen, now: float, status: str, reason: str) -> None:
        self._emit(StopPlayout(gen.id))  # the session answers with playout_stopped(played_ms)
        if gen.tool is not None:
            self.context.add_assistant(gen.segment_text.strip(), tool_calls=(gen.tool.call,))
            self.context.add_tool_result(gen.tool.call, '{"error": "cancelled: the user interrupted"}')
            self._emit(CancelTool(gen.tool.call.id))
            gen.tool = None
            gen.segment_text = ""
            gen.segment_first_piece = len(gen.pieces)
        if gen.client_call is not None:
            # The client may still answer the call it was sent: the history must hold the call for that answer.
            self.context.add_assistant("", tool_calls=(gen.client_call,), item_id=gen.item_id)
        self._cancel_work(gen, now)
        self._finish_response(gen, now, status, reason)

    def _finish_response(self, gen: Gen, now: float, status: str, reason: str = "") -> None:
        turn = self.turn
        metrics = self._metrics(gen, turn)
        self.stats.responses += 1
        self.stats.tokens_total += gen.tokens
        if metrics["saved_ms"] is not None:
            self.stats.saved_ms.append(metrics["saved_ms"])
        if metrics["speech_end_to_first_audio_ms"] is not None:
            self.stats.voice_to_voice_ms.append(metrics["speech_end_to_first_audio_ms"])
        response: dict[str, Any] = {
            "id": gen.response_id, "item_id": gen.item_id, "status": status, "output_text": gen.full_text.strip(),
            "metrics": metrics,
            "usage": {"input_tokens": gen.prompt_tokens, "output_tokens": gen.tokens,
                      "total_tokens": gen.prompt_tokens + gen.tokens},
        }
        if gen.client_call is not None:
            call = gen.client_call
            response["function_call"] = {"call_id": call.id, "name": call.name, "arguments": call.arguments}
        if reason:
            response["status_details"] = {"reason": reason}
        self._send("response.done", response=response)
        if self.response is gen:
            self.response = None
        if gen.id in self._gens and gen.cancel_requested_ms is None:
            del self._gens[gen.id]
        if turn is not None and self.turn is turn:
            self.turn = None

    def _metrics(self, gen: Gen, turn: Turn | None) -> dict[str, Any]:
        speech_end = turn.speech_end_ms if turn is not None else None
        saved = None
        if gen.speculative and gen.committed_ms is not None and gen.first_audio_ready_ms is not None:
            # Without the draft, the work would have started at commit and taken as long as it did here.
            saved = max(0.0, min(gen.first_audio_ready_ms, gen.committed_ms) - gen.started_ms)
        v2v = None
        if speech_end is not None and gen.first_audio_out_ms is not None:
            v2v = gen.first_audio_out_ms - speech_end

        def r(x: float | None, digits: int = 1) -> float | None:
            return None if x is None else round(x, digits)

        return {
            "speech_end_ms": r(speech_end),
            "draft_start_ms": r(gen.started_ms) if gen.speculative else None,
            "end_of_turn_decision_ms": r(turn.ended_ms) if turn is not None else None,
            "commit_ms": r(gen.committed_ms),
            "transcript_ready_ms": r(gen.input_ready_ms),
            # When the tokenizer actually finished (a draft may have asked for the words only later), and how.
            "transcript_done_ms": r(gen.input.timing.get("done_ms")) if gen.input is not None else None,
            "asr": {k: v for k, v in gen.input.timing.items() if k != "done_ms"} if gen.input is not None else {},
            "lm_first_token_ms": r(gen.first_token_ms),
            "first_audio_ready_ms": r(gen.first_audio_ready_ms),
            "first_audio_out_ms": r(gen.first_audio_out_ms),
            "speculative": gen.speculative,
            "saved_ms": r(saved),
            "speech_end_to_first_audio_ms": r(v2v),
            "drafts_started": turn.drafts if turn is not None else 0,
            "drafts_discarded": turn.discarded if turn is not None else 0,
            "draft_tokens_wasted": turn.wasted_tokens if turn is not None else 0,
            "tokens": gen.tokens,
            # The silence this turn's end needed (end_of_turn_ms, or what its semantic score asked for).
            "end_of_turn_ms": round(self._silence_needed(turn)) if turn is not None else self.settings.end_of_turn_ms,
            "end_of_turn_probability": r(self._probability(turn), 3) if turn is not None else None,
            "end_of_turn_transcript_probability": (r(self._transcript_probability(turn), 4)
                                                   if turn is not None else None),
            "speculate_after_ms": self.settings.speculate_after_ms,
        }

    # --- tools -----------------------------------------------------------------------------------------------

    def _start_tool(self, gen: Gen, call: ToolCall, now: float) -> None:
        if call.name not in self.client_tools:
            self._run_tool(gen, call, now)
            return
        # The client runs it: the response ends here (after what was already said has played), and the client
        # answers with the call's output and asks for the next response.
        gen.waiting_tool = None
        gen.client_call = call
        self._client_calls[call.id] = call
        self._send("response.function_call.requested", response_id=gen.response_id, call_id=call.id,
                   name=call.name, arguments=call.arguments)
        self._emit(EndGeneration(gen.id))

    def _run_tool(self, gen: Gen, call: ToolCall, now: float) -> None:
        gen.waiting_tool = None
        gen.tool = PendingTool(call, started_ms=now, deadline_ms=now + self.settings.tool_timeout_ms)
        self._emit(RunTool(gen.id, call))
        self._send("response.function_call.started", response_id=gen.response_id, call_id=call.id,
                   name=call.name, arguments=call.arguments)

    def _check_tool(self, now: float) -> None:
        s = self.settings
        gen = self.response
        if gen is None or gen.tool is None:
            return
        tool = gen.tool
        if now >= tool.deadline_ms:
            self._emit(CancelTool(tool.call.id))
            self._tool_done(gen, now, '{"error": "the tool timed out"}', timed_out=True)
        elif not tool.filler_sent and self.settings.tool_filler and now - tool.started_ms >= s.filler_after_ms:
            tool.filler_sent = True
            self._emit(Speak(gen.id, self.settings.tool_filler))

    def _tool_done(self, gen: Gen, now: float, result: str, timed_out: bool) -> None:
        tool = gen.tool
        assert tool is not None
        gen.tool = None
        self.context.add_assistant(gen.segment_text.strip(), tool_calls=(tool.call,))
        self.context.add_tool_result(tool.call, result)
        gen.segment_text = ""
        gen.segment_first_piece = len(gen.pieces)
        self._send(
            "response.function_call.completed", response_id=gen.response_id, call_id=tool.call.id,
            name=tool.call.name, output=result, timed_out=timed_out, duration_ms=round(now - tool.started_ms, 1),
        )
        self._generate(gen, False, gen.input.text if gen.input else "")

    # --- plumbing --------------------------------------------------------------------------------------------

    def _new_gen(self, now: float, end_sample: int, speculative: bool) -> Gen:
        gen = Gen(
            id=self._id("draft" if speculative else "gen"), input_id=self._id("input"), end_sample=end_sample,
            started_ms=now, speculative=speculative, response_id=self._id("resp"), item_id=self._id("item"),
        )
        self._gens[gen.id] = gen
        return gen

    def _generate(self, gen: Gen, speculative: bool, user_text: str, current: UserInput | None = None) -> None:
        messages = self.context.messages_for(current)
        gen.prompt_tokens = self.context.prompt_tokens(messages)
        self._emit(Generate(gen.id, messages, speculative, user_text, score_turn=speculative and gen.score_turn))

    def _cancel_work(self, gen: Gen, now: float) -> None:
        if gen.cancel_requested_ms is None:
            gen.cancel_requested_ms = now
            self._emit(CancelGeneration(gen.id))

    def _set(self, state: State) -> None:
        self.state = state

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    def _emit(self, effect: Effect) -> None:
        self._out.append(effect)

    def _send(self, type_: str, **fields: Any) -> None:
        self._out.append(Send(events.event(type_, **fields)))

    def _send_error(self, kind: str, message: str, **fields: Any) -> None:
        self._out.append(Send(events.error(kind, message, **fields)))

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out
