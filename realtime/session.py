"""A conversation session: one user, one controller, whatever transport carries the audio.

The session is an actor. Everything that happens to it — a VAD decision, a transcript, an LM token, a decoder
chunk, a frame played, a tool result, a client event — is posted to its inbox and handled one at a time by
`run()`, which feeds the controller and carries out the effects the controller returns. State therefore lives
in one place (the controller) and changes in one task.

Transports see only `push_audio`, `handle_client_event`, `playout` and `close`; they know nothing of models.
Protocol adapters (realtime/openai_realtime/) drive the same session through its public methods (`apply_settings`,
`cancel_response`, `commit_input`, `add_text`, `create_response`, ...) instead of Parley's own JSON events.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import secrets
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from models.interfaces import GenerationOptions, PassStopped, Role, ToolSpec, UserInput, VoiceSettings
from realtime import controller as ctl
from realtime import events, metrics
from realtime.config import ConfigError, SessionConfig, with_session_overrides
from realtime.context import ContextManager
from realtime.listener import Hypothesis, Listener, ListenerEvent, SpeechStart, SpeechStop
from realtime.playout import Playout
from realtime.response import AudioChunk, Finished, Response, ResponseEvent, Token, ToolRequest, TurnScore

if TYPE_CHECKING:
    from realtime.engine import Engine

log = logging.getLogger(__name__)

Input = Callable[[float], list[ctl.Effect]]


class TransportLink(Protocol):
    """What a session needs from the connection that carries it."""

    kind: str  # "webrtc", "twilio", "sip": for logs and metrics
    sample_rate: int  # rate the transport wants outgoing audio at

    def send_event(self, event: dict[str, Any]) -> None: ...

    def unheard_ms(self) -> float:
        """Audio handed out but not yet played at the far end (a buffering peer such as Twilio); 0 if none."""
        ...


class Session:
    def __init__(self, session_id: str, engine: Engine, settings: SessionConfig, link: TransportLink) -> None:
        self.id = session_id
        # Opens this session's event tap (and nothing else): handed only to whoever started the call.
        self.events_token = f"evt_{secrets.token_urlsafe(24)}"
        self.engine = engine
        self.settings = settings
        self.link = link
        self._t0 = time.monotonic()
        stack = engine.stack
        self._inbox: asyncio.Queue[Input | None] = asyncio.Queue()
        self.playout = Playout(
            link.sample_rate,
            engine.config.webrtc.frame_ms,
            on_started=self._on_audio_started,
            on_finished=lambda gen_id: self._post(lambda now: self.controller.audio_finished(now, gen_id)),
        )
        context = ContextManager(settings.instructions, settings.context_tokens, stack.lm.count_tokens)
        self.controller = ctl.Controller(settings, context, engine.tools.specs, stack.tokenizer.normalize,
                                         transcript_scores=stack.transcript_turn)
        self.listener = Listener(
            stack.vad, stack.tokenizer, engine.vad_executor, engine.asr_executor, self._on_listener,
            settings.vad_threshold, settings.min_speech_ms, settings.max_turn_ms, clock=self.now_ms,
        )
        self._responses: dict[str, Response] = {}
        self._released: set[str] = set()  # gen_ids whose audio may play (committed drafts, plain responses)
        # By owning gen_id: the pass, and the end sample of its span (a cancelled draft's pass is dropped).
        self._transcriptions: dict[str, tuple[asyncio.Future[Any], int]] = {}
        self._tools: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._prefill: asyncio.Task[None] | None = None
        self._last_hypothesis = ""
        self._observers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        # Tools the client runs itself (OpenAI Realtime `tools`), offered to the LM next to the server's own.
        self.client_tools: list[ToolSpec] = []
        self.tool_choice: Literal["auto", "none"] = "auto"
        self._input_start = 0  # first sample of the audio not yet committed or cleared (manual turns)
        self.voice = voice_settings(settings)
        self.closed = False
        self.summary: dict[str, Any] | None = None
        self._task = asyncio.create_task(self._run(), name=f"session-{session_id}")

    # --- the transport's side ----------------------------------------------------------------------------------

    def now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0

    def start(self) -> None:
        """Announce the session to the client (call once its event channel can carry it)."""
        # The clock origin lets a client on the same host place server timestamps on its own monotonic clock.
        self._emit_event(events.event("session.created", session={
            "id": self.id, **self._public_settings(), "clock": {"monotonic_origin_s": self._t0},
        }))
        self._warn_unsupported_voice()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue receiving a copy of every event this session sends (None when it ends): the event tap."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self._observers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._observers.discard(queue)

    def _emit_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "response.done":
            metrics.observe_response(event["response"].get("metrics", {}))
        for queue in self._observers:
            if not queue.full():  # a slow observer loses events rather than slowing the call
                queue.put_nowait(event)
        self.link.send_event(event)

    def notify(self, event: dict[str, Any]) -> None:
        """An event the transport observed (a DTMF key press), sent and tapped like the session's own."""
        self._emit_event(event)

    def push_audio(self, samples: np.ndarray, at_ms: float | None = None) -> None:
        """Incoming audio, already mono float32 at 16 kHz."""
        if self.closed:
            return
        s = self.settings
        # Echo guard: while the assistant talks, the VAD needs a clearer voice to count it as the user.
        self.listener.set_threshold(s.vad_threshold + (s.vad_threshold_while_speaking if self.playout.active else 0))
        self.listener.push(samples, self.now_ms() if at_ms is None else at_ms)

    def handle_client_event(self, raw: str | bytes) -> None:
        """A client event from the transport; malformed input gets an `error` event and changes nothing."""
        try:
            message = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._emit_event(events.error("invalid_request_error", f"event is not valid JSON: {exc}"))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._emit_event(events.error("invalid_request_error", "an event must be an object with a 'type'"))
            return
        kind = message["type"]
        event_id = message.get("event_id")
        if kind == "session.update":
            self._update(message.get("session"), event_id)
        elif kind == "response.cancel":
            self.cancel_response()
        elif kind == "conversation.item.truncate":
            self._client_truncate(message, event_id)
        elif kind == "ping":
            pass
        else:
            self._emit_event(
                events.error("invalid_event", f"unknown event type {kind!r}; known: {', '.join(events.CLIENT_EVENTS)}",
                             event_id=event_id)
            )

    # --- what protocol adapters call ---------------------------------------------------------------------------

    def apply_settings(self, overrides: dict[str, Any]) -> SessionConfig:
        """Validate and apply [session] overrides; raises ConfigError (nothing changes then)."""
        settings = with_session_overrides(self.settings, overrides)
        voice = voice_settings(settings)
        if settings.manual_turns and not self.settings.manual_turns:
            self.clear_input()  # a manual commit covers what was sent after turning manual turns on
        self.settings = settings
        self.voice = voice
        self._post(lambda now: self.controller.update_settings(now, settings))
        return settings

    def cancel_response(self, strict: bool = False, event_id: str | None = None) -> None:
        """Stop the current response; `strict`: having none is an error (naming the client's `event_id`)."""
        self._post(lambda now: self.controller.cancel_response(now, strict, event_id))

    def set_client_tools(self, tools: list[ToolSpec]) -> None:
        self.client_tools = tools
        self.controller.client_tools = frozenset(t.name for t in tools)

    @property
    def uncommitted_ms(self) -> float:
        """Audio sent since the last commit or clear (manual turns)."""
        return (self.listener.samples_end - self._input_start) * 1000.0 / 16000

    def commit_input(self) -> None:
        """The audio sent since the last commit or clear becomes a user turn (manual turns)."""
        start, end = self._input_start, self.listener.samples_end
        self._input_start = end
        self._post(lambda now: self.controller.commit_input(now, start, end))

    def clear_input(self) -> None:
        self._input_start = self.listener.samples_end

    # Like every change of conversation state, these go through the inbox: in order with what is already posted.

    def add_text(self, text: str, role: Role, item_id: str) -> None:
        """A typed message (user, assistant or system)."""
        self._post(lambda now: self._no_effects(self.controller.add_text(now, text, role, item_id)))

    def add_tool_output(self, call_id: str, output: str) -> bool:
        """False (and nothing changes) if no client tool call `call_id` is waiting for its output."""
        if not self.controller.awaits_tool_output(call_id):
            return False
        self._post(lambda now: self._no_effects(self.controller.add_tool_output(now, call_id, output)))
        return True

    def delete_item(self, item_id: str) -> None:
        self._post(lambda now: self._no_effects(self.controller.context.delete(item_id)))

    @staticmethod
    def _no_effects(_: object) -> list[ctl.Effect]:
        return []

    def create_response(self, event_id: str | None = None) -> None:
        self._post(lambda now: self.controller.request_response(now, event_id))

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        now = self.now_ms()
        self._apply(self.controller.close(now))
        for response in list(self._responses.values()):
            await response.cancel()
        tasks = [*self._tools.values(), *self._background, *([self._prefill] if self._prefill else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.listener.close()
        self._inbox.put_nowait(None)
        await asyncio.gather(self._task, return_exceptions=True)
        self.summary = {
            "session_id": self.id, "transport": self.link.kind, "reason": reason,
            "duration_s": round(now / 1000.0, 1), **self.controller.stats.summary(),
        }
        ratio = self.controller.context.audio_to_text_ratio()
        if ratio is not None:
            self.summary["audio_to_text_token_ratio"] = round(ratio, 2)
        log.info("session %s closed (%s): %s", self.id, reason, json.dumps(self.summary))
        try:
            self._emit_event(events.event("session.summary", summary=self.summary))
        except Exception:  # the channel is often gone by now; the log line above has it
            pass
        for queue in self._observers:
            queue.put_nowait(None)

    # --- the actor ---------------------------------------------------------------------------------------------

    def _post(self, item: Input) -> None:
        if not self.closed:
            self._inbox.put_nowait(item)

    async def _run(self) -> None:
        while True:
            deadline = self.controller.next_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - self.now_ms()) / 1000.0)
            try:
                async with asyncio.timeout(timeout):
                    item = await self._inbox.get()
            except TimeoutError:
                self._apply(self.controller.tick(self.now_ms()))
                continue
            if item is None:
                return
            try:
                self._apply(item(self.now_ms()))
                self._apply(self.controller.tick(self.now_ms()))
            except Exception:
                # A bug in one input must not end the call: report it and keep serving.
                log.exception("session %s: input failed", self.id)
                self._emit_event(events.error("server_error", "internal error; the session continues"))

    def _apply(self, effects: list[ctl.Effect]) -> None:
        for effect in effects:
            match effect:
                case ctl.Send(event=event):
                    self._emit_event(event)
                case ctl.OpenTurn(start_sample=sample):
                    self._last_hypothesis = ""
                    self.listener.open_turn(sample)
                case ctl.CloseTurn():
                    self.listener.close_turn()
                case ctl.Transcribe():
                    self._transcribe(effect)
                case ctl.ScoreTurn(end_sample=end_sample):
                    self._score_turn(end_sample)
                case ctl.EndGeneration(gen_id=gen_id):
                    if gen_id in self._responses:
                        self._responses[gen_id].resume(None)
                case ctl.Generate():
                    self._generate(effect)
                case ctl.ReleaseAudio(gen_id=gen_id):
                    self._released.add(gen_id)
                    response = self._responses.get(gen_id)
                    if response is not None:
                        response.release()
                        if response.task is not None and response.task.done():
                            self._forget(gen_id)
                case ctl.CancelGeneration(gen_id=gen_id):
                    self._spawn(self._cancel_generation(gen_id))
                case ctl.StopPlayout(gen_id=gen_id):
                    # A far end that buffers (Twilio) has not played everything handed out yet.
                    played = max(0.0, self.playout.stop(gen_id) - self.link.unheard_ms())
                    self._apply(self.controller.playout_stopped(self.now_ms(), gen_id, played))
                case ctl.RunTool(call=call):
                    self._tools[call.id] = asyncio.create_task(self._run_tool(call), name=f"tool-{call.name}")
                case ctl.CancelTool(call_id=call_id):
                    task = self._tools.pop(call_id, None)
                    if task is not None:
                        task.cancel()
                case ctl.Speak(gen_id=gen_id, text=text):
                    if gen_id in self._responses:
                        self._responses[gen_id].speak(text)
                case ctl.Prefill(messages=messages):
                    self._prefill = asyncio.create_task(self._warm_lm(messages), name="lm-prefill")

    # --- effects -----------------------------------------------------------------------------------------------

    def _transcribe(self, effect: ctl.Transcribe) -> None:
        if effect.start_sample is not None:
            fut = self.listener.span_pass(effect.start_sample, effect.end_sample)
        else:
            fut = self.listener.final_pass(effect.end_sample)
        if effect.gen_id is not None:
            self._transcriptions[effect.gen_id] = (fut, effect.end_sample)

        def done(f: asyncio.Future[Any]) -> None:
            if effect.gen_id is not None:
                self._transcriptions.pop(effect.gen_id, None)
            if f.cancelled():
                return
            exc = f.exception()
            if isinstance(exc, PassStopped) and effect.gen_id is not None:
                return  # dropped: its draft was cancelled, and nothing waits for these words
            if exc is not None:
                log.error("session %s: transcription failed: %s", self.id, exc)
                self._emit_event(events.error("server_error", f"transcription failed: {exc}"))
                result = UserInput("", "", "")
            else:
                result = f.result()
            self._post(lambda now: self.controller.input_ready(now, effect.input_id, result))

        fut.add_done_callback(done)

    def _score_turn(self, end_sample: int) -> None:
        detector = self.engine.stack.turn
        if detector is None:  # the stack has no turn model: the silence rule decides
            self._post(lambda now: self.controller.turn_scored(now, end_sample, None))
            return
        audio = self.listener.turn_audio(end_sample)
        fut = asyncio.get_running_loop().run_in_executor(self.engine.turn_executor, detector.probability, audio)

        def done(f: asyncio.Future[float]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("session %s: end-of-turn scoring failed: %s", self.id, exc)
            probability = None if exc is not None else float(f.result())
            self._post(lambda now: self.controller.turn_scored(now, end_sample, probability))

        fut.add_done_callback(done)

    async def _warm_lm(self, messages: list[Any]) -> None:
        """One token over the new history: local LMs keep that prefix cached for the next turn."""
        options = GenerationOptions(max_tokens=1, temperature=0.0)  # no tools: what most turns are offered
        try:
            async for _ in self.engine.stack.lm.stream(messages, options):
                pass
        except Exception as exc:  # only an optimisation: a failure must not reach the caller
            log.debug("session %s: LM prefill failed: %s", self.id, exc)

    def _generate(self, effect: ctl.Generate) -> None:
        # A prefill still running is left to finish (the LM takes one stream at a time): its prompt is this
        # generation's prefix, so its work is reused, where cancelling it would abort its llama.cpp call and lose it.
        existing = self._responses.get(effect.gen_id)
        if existing is not None:
            existing.resume(effect.messages)
            return
        s = self.settings
        # Only the tools this turn could need are offered; most turns get none, which is also the prompt the
        # idle-time prefill cached (`_warm_lm`), so their prefix stays valid.
        tools = [*(self.engine.tools.relevant_specs(effect.user_text) if s.tools else []), *self.client_tools]
        options = GenerationOptions(max_tokens=s.max_response_tokens, temperature=s.temperature, tools=tools,
                                    tool_choice=self.tool_choice, score_turn_end=effect.score_turn)
        response = Response(
            effect.gen_id, self.engine.stack.lm, self.engine.stack.tts, self.engine.tts_executor, self.voice,
            options, self.link.sample_rate, self._on_response, self.playout.enqueue, self.playout.end,
            speak=not s.text_only,
        )
        if not effect.speculative:
            self._released.add(effect.gen_id)
            response.release()
        self._responses[effect.gen_id] = response
        response.start(effect.messages)

    async def _cancel_generation(self, gen_id: str) -> None:
        waited: dict[str, float] = {}  # what the stop waited for, and how long: where cancellation time goes
        started = self.now_ms()

        async def timed(part: str, work: Awaitable[Any]) -> None:
            try:
                await work
            except Exception:  # only the time matters here; the work's own error was reported where it ran
                pass
            waited[part] = self.now_ms() - started

        pending: list[Awaitable[None]] = []
        transcription = self._transcriptions.get(gen_id)
        if transcription is not None:
            # Its span is stale (the caller went on, or the call ended): the pass stops at its next step.
            fut, end_sample = transcription
            self.listener.drop_pass(end_sample)
            # Until it is done, cancelled (it had not started) or has raised PassStopped; never cancelled from here.
            pending.append(timed("asr", asyncio.wait({fut})))
        response = self._responses.pop(gen_id, None)
        self._released.discard(gen_id)
        if response is not None:
            pending.append(timed("lm_tts", response.cancel()))
        await asyncio.gather(*pending, return_exceptions=True)
        self._post(lambda now: self.controller.generation_finished(now, gen_id, None, waited))

    async def _run_tool(self, call: Any) -> None:
        result = await self.engine.tools.run(call)
        self._tools.pop(call.id, None)
        self._post(lambda now: self.controller.tool_finished(now, call.id, result))

    def _forget(self, gen_id: str) -> None:
        self._responses.pop(gen_id, None)
        self._released.discard(gen_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- callbacks from the listener and the responses (they only post) -----------------------------------------

    def _on_listener(self, event: ListenerEvent) -> None:
        match event:
            case SpeechStart(at_ms=at_ms, sample=sample):
                self._post(lambda now: self.controller.speech_started(at_ms, sample))
            case SpeechStop(speech_end_ms=end_ms, sample=sample):
                if self.settings.speculation and self.listener.turn_open:
                    # Speculative work starts here: the tokenizer's final pass over the turn so far, which the
                    # draft and the end of turn reuse if no more speech comes (wasted CPU if it does).
                    self.listener.final_pass(sample)
                self._post(lambda now: self.controller.speech_stopped(now, end_ms, sample))
            case Hypothesis(text=text):
                self._post(lambda now: self._hypothesis(text))

    def _on_audio_started(self, gen_id: str) -> None:
        # Stamped here, as the frame leaves, not when the inbox gets to it.
        at = self.now_ms()
        self._post(lambda now: self.controller.audio_started(at, gen_id))

    def _hypothesis(self, text: str) -> list[ctl.Effect]:
        turn = self.controller.turn
        if turn is None or self.controller.state not in (ctl.State.USER_SPEAKING, ctl.State.PAUSED):
            return []
        previous, self._last_hypothesis = self._last_hypothesis, text
        delta = text[len(previous):] if text.startswith(previous) else text
        return [ctl.Send(events.event("conversation.item.input_audio_transcription.delta", item_id=turn.item_id,
                                      delta=delta, transcript=text))]

    def _on_response(self, gen_id: str, event: ResponseEvent) -> None:
        at = self.now_ms()  # when it happened; the inbox may handle it a little later
        match event:
            case Token(text=text):
                self._post(lambda now: self.controller.lm_token(at, gen_id, text))
            case AudioChunk(text=text, duration_ms=ms, in_context=in_context):
                self._post(lambda now: self.controller.audio_ready(at, gen_id, text, ms, in_context))
            case ToolRequest(call=call):
                self._post(lambda now: self.controller.tool_requested(now, gen_id, call))
            case TurnScore(probability=probability):
                self._post(lambda now: self.controller.transcript_scored(now, gen_id, probability))
            case Finished(error=error):
                # A draft that finished before its commit still holds its audio: keep it until released.
                if gen_id in self._released:
                    self._forget(gen_id)
                self._post(lambda now: self.controller.generation_finished(now, gen_id, error))

    # --- settings ----------------------------------------------------------------------------------------------

    def _update(self, overrides: Any, event_id: Any) -> None:
        if not isinstance(overrides, dict):
            self._emit_event(events.error("invalid_request_error", "session.update needs a 'session' object",
                                              event_id=event_id))
            return
        try:
            self.apply_settings(overrides)
        except ConfigError as exc:
            self._emit_event(events.error("invalid_request_error", str(exc), event_id=event_id))
            return
        self._emit_event(events.event("session.updated", session={"id": self.id, **self._public_settings()}))
        self._warn_unsupported_voice()

    def _client_truncate(self, message: dict[str, Any], event_id: Any) -> None:
        ms = message.get("audio_end_ms")
        if not isinstance(ms, int | float) or ms < 0:
            self._emit_event(events.error("invalid_request_error", "audio_end_ms must be a number >= 0",
                                              event_id=event_id))
            return
        # The client stopped playing (its own barge-in detection): stop the response like a barge-in would.
        self.cancel_response()

    def _warn_unsupported_voice(self) -> None:
        unsupported = self.engine.stack.tts.unsupported(self.voice)
        if unsupported:
            self._emit_event(events.event(
                "warning", code="unsupported_voice_settings", settings=unsupported,
                message=f"the {self.engine.stack.name} stack cannot honour: {', '.join(unsupported)}; "
                        "they are ignored",
            ))

    def _public_settings(self) -> dict[str, Any]:
        return {"stack": self.engine.stack.name, "settings": asdict(self.settings)}


def voice_settings(s: SessionConfig) -> VoiceSettings:
    """The voice a session asked for; raises ConfigError for a cloning sample that is not a WAV."""
    clone = None
    if s.clone_audio:
        try:
            clone = decode_wav_b64(s.clone_audio)
        except (ValueError, EOFError, wave.Error) as exc:
            raise ConfigError(f"[session].clone_audio must be a base64 mono 16-bit WAV: {exc}") from None
    return VoiceSettings(voice=s.voice, speed=s.speed, emotion=s.emotion, dialect=s.dialect, style=s.style,
                         clone_audio=clone, clone_text=s.clone_text)


def decode_wav_b64(data: str) -> np.ndarray:
    """A base64 mono 16-bit WAV (a voice-cloning sample) as float32 at 16 kHz."""
    from realtime.audio import ENGINE_RATE, Resampler

    with wave.open(io.BytesIO(base64.b64decode(data, validate=True)), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("the cloning sample must be 16-bit PCM WAV")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        rate = w.getframerate()
    resampler = Resampler(rate, ENGINE_RATE)
    return np.concatenate([resampler.process(pcm), resampler.process(np.zeros(rate // 10, np.int16))])
