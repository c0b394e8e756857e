"""The four model stages of a voice conversation, as small Protocols.

The engine (``realtime/``) only ever talks to these. A stack (``models/embedded``, ``models/step_audio``,
``models/openai_compat``, ``models/echo``) provides one object per stage, loaded once per process and shared
by every session; per-session state lives in the stream objects the stages open.

Threading contract: ``VadStream.probability``, ``TokenizerStream`` methods and ``SpeechSynthesizer.stream`` are
synchronous and may take milliseconds to seconds; the engine calls them from worker threads, never on the
event loop. ``LanguageModel.stream`` is an async iterator (remote backends are natively async; local ones run
their decode loop in a thread) and must stop its work promptly when the iterator is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    """A callable the LM may invoke: OpenAI function-tool shape."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    item_id: str = ""  # the conversation item it came from (clients may delete items); models ignore it


@dataclass(frozen=True)
class UserInput:
    """One user turn as the tokenizer stage produced it.

    ``text`` is the transcript (shown to people, kept in history); ``content`` is what the LM receives for the
    current turn in the stack's native form (the transcript for text stacks, ``<audio_N>`` codes for
    Step-Audio); ``key`` is the normalised form a speculative draft's input is compared on at commit.
    """

    text: str
    content: str
    key: str
    audio_tokens: int = 0
    # How the stage got there (e.g. audio decoded, work ms), for metrics; not compared, not sent to the LM.
    timing: Mapping[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LMDelta:
    """One step of LM output: some text, or a complete tool call; or, first, the transcript's turn score."""

    text: str = ""
    tool_call: ToolCall | None = None
    # Asked for by GenerationOptions.score_turn_end: how likely it is that the user's last message is complete,
    # read from the LM's own next-token probabilities before it answers.
    finished: float | None = None


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 120
    temperature: float = 0.3
    tools: Sequence[ToolSpec] = ()
    # OpenAI's tool_choice: "none" keeps the tools described in the prompt (a cached prefix stays valid) but the
    # model must answer in words.
    tool_choice: Literal["auto", "none"] = "auto"
    # A speculative draft under semantic turn detection: yield LMDelta(finished=...) before the answer
    # (stacks whose LM can: ModelStack.transcript_turn).
    score_turn_end: bool = False


@dataclass(frozen=True)
class VoiceSettings:
    """What a session asked its voice to be; a synthesizer honours what it can and reports the rest."""

    voice: str = ""
    speed: float = 1.0
    emotion: str = ""
    dialect: str = ""
    style: str = ""
    clone_audio: np.ndarray | None = field(default=None, compare=False)
    clone_text: str = ""


class VadStream(Protocol):
    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of one frame of `VoiceActivityDetector.frame_samples` float32 16 kHz samples."""
        ...

    def reset(self) -> None: ...


class VoiceActivityDetector(Protocol):
    frame_samples: int

    def open_stream(self) -> VadStream: ...


class PassStopped(Exception):
    """A tokenizer pass stopped early because its `stop` said so: nobody wants its result any more."""


class TokenizerStream(Protocol):
    """Per-session state of the streaming fixed-segment tokenizer (the ASR, for text stacks).

    The engine hands it the current turn's audio one fixed-length segment at a time while the user speaks
    (``push_segment``), so the stage can do its work early; ``finalize`` returns the input for the turn's audio
    up to a given sample, doing only what is left.
    """

    def push_segment(self, turn_audio: np.ndarray) -> str:
        """`turn_audio` is the whole turn so far (16 kHz float32), grown by one segment; returns a hypothesis."""
        ...

    def finalize(self, turn_audio: np.ndarray, stop: Callable[[], bool] | None = None) -> UserInput:
        """The input for the turn's audio. `stop` may be asked between the pass's steps; when it says True the
        pass may raise PassStopped (a discarded draft's pass: the caller went on)."""
        ...

    def reset(self) -> None: ...

    def abandon(self) -> None:
        """Called from the event loop while a ``push_segment`` may be running on the stage thread: a final pass
        needs the thread, so that partial pass may stop early (its result is then discarded)."""
        ...


class SpeechTokenizer(Protocol):
    segment_ms: int

    def open_stream(self) -> TokenizerStream: ...

    def normalize(self, text: str) -> str:
        """Comparison key for commit: case, punctuation and spacing removed."""
        ...


class TurnDetector(Protocol):
    """How likely it is that the caller has finished their turn (semantic end of turn).

    Called at a pause with the turn's audio up to the speech end; the controller fuses the score with the
    silence so far (`[session] turn_detection = "semantic"`).
    """

    def probability(self, turn_audio: np.ndarray) -> float:
        """`turn_audio`: 16 kHz float32 mono, the turn from its start to the caller's speech end. In [0, 1]."""
        ...


class LanguageModel(Protocol):
    name: str

    def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[LMDelta]: ...

    def count_tokens(self, text: str) -> int: ...


class SpeechSynthesizer(Protocol):
    sample_rate: int

    def stream(self, text: str, voice: VoiceSettings) -> Iterator[np.ndarray]:
        """Float32 mono chunks at `sample_rate` for one piece of text, each as soon as it is ready."""
        ...

    def unsupported(self, voice: VoiceSettings) -> list[str]:
        """Names of voice settings this synthesizer cannot honour (reported to the client as a warning)."""
        ...


@dataclass
class ModelStack:
    """One loaded stack: the four stages plus a name for logs and metrics."""

    name: str
    vad: VoiceActivityDetector
    tokenizer: SpeechTokenizer
    lm: LanguageModel
    tts: SpeechSynthesizer
    # Semantic end of turn; None: the stack decides by silence alone.
    turn: TurnDetector | None = None
    # The LM also scores the end of turn from the transcript (LMDelta.finished), fused with `turn`'s score.
    transcript_turn: bool = False
    # Extra facts a stack wants in /healthz (model files, versions).
    info: dict[str, Any] = field(default_factory=dict)
