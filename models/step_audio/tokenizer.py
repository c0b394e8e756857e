"""The Step-Audio tokenizer as Parley's streaming fixed-segment stage.

Every segment (240 ms: one Paraformer chunk, two groups) the stream runs the linguistic encoder on the chunks that
completed and the semantic tokenizer on the windows that completed, and reports how many whole 2:3 groups exist.
`finalize` only adds the tail (the last partial chunk and window) on copies of the state. The turn's input is:

- content: the `<audio_N>` string of every whole group (what the chat model reads for the current turn);
- key: the same codes as a string (two drafts over the same audio compare equal, any difference is a new input);
- text: a transcript for history and display, from the configured transcriber;
- audio_tokens: the number of audio tokens (for the audio/text token ratio in the session summary).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.interfaces import UserInput
from models.step_audio import audio_tokens as fmt
from models.step_audio.linguistic import LinguisticModel, LinguisticStream
from models.step_audio.semantic import SemanticModel, SemanticStream

if TYPE_CHECKING:
    from models.embedded.whisper import WhisperStream, WhisperTokenizer

_NON_WORD = re.compile(r"[^\w\s']+", re.UNICODE)


class TranscriptStream(Protocol):
    def push(self, audio: np.ndarray) -> str: ...

    def finalize(self, audio: np.ndarray, content: str) -> str: ...

    def reset(self) -> None: ...


class Transcriber(Protocol):
    def open(self) -> TranscriptStream: ...


class PlaceholderTranscripts:
    """No transcript: history records that the user spoke, and for how long."""

    def open(self) -> TranscriptStream:
        return _Placeholder()


class _Placeholder:
    def push(self, audio: np.ndarray) -> str:
        return ""

    def finalize(self, audio: np.ndarray, content: str) -> str:
        return f"(spoken, {audio.size / 16000:.1f} s)" if content else ""

    def reset(self) -> None:
        pass


class ChatTranscripts:
    """Step-Audio-Chat transcribes the turn's audio tokens itself (one short generation at the end of the turn)."""

    def __init__(self, transcribe: Callable[[str], str]) -> None:
        self.transcribe = transcribe

    def open(self) -> TranscriptStream:
        return _ChatStream(self.transcribe)


class _ChatStream:
    def __init__(self, transcribe: Callable[[str], str]) -> None:
        self._transcribe = transcribe
        self._cache: tuple[str, str] | None = None

    def push(self, audio: np.ndarray) -> str:
        return ""

    def finalize(self, audio: np.ndarray, content: str) -> str:
        if not content:
            return ""
        if self._cache is None or self._cache[0] != content:  # a draft and the commit share one transcript
            self._cache = (content, self._transcribe(content))
        return self._cache[1]

    def reset(self) -> None:
        self._cache = None


class WhisperTranscripts:
    """The embedded faster-whisper (the release's demo also keeps history from a separate ASR model)."""

    def __init__(self, whisper: WhisperTokenizer, every_ms: int = 1000) -> None:
        self.whisper = whisper
        self.every = every_ms * 16

    def open(self) -> TranscriptStream:
        return _WhisperStream(self.whisper.open_stream(), self.every)


class _WhisperStream:
    def __init__(self, stream: WhisperStream, every: int) -> None:
        self._stream = stream
        self._every = every
        self._next = every
        self._cache: tuple[int, str] | None = None

    def push(self, audio: np.ndarray) -> str:
        # Whisper costs the same for any length (it pads to 30 s): pass only every second of new speech.
        if audio.size < self._next:
            return ""
        self._next = audio.size + self._every
        return self._stream.push_segment(audio)

    def finalize(self, audio: np.ndarray, content: str) -> str:
        if self._cache is None or self._cache[0] != audio.size:
            self._cache = (audio.size, self._stream.finalize(audio).text)
        return self._cache[1]

    def reset(self) -> None:
        self._stream.reset()
        self._next = self._every
        self._cache = None


class StepAudioTokenizer:
    def __init__(self, linguistic: LinguisticModel, semantic: SemanticModel, transcripts: Transcriber,
                 segment_ms: int = 240) -> None:
        self.linguistic = linguistic
        self.semantic = semantic
        self.transcripts = transcripts
        self.segment_ms = segment_ms

    def open_stream(self) -> StepAudioStream:
        return StepAudioStream(self)

    def normalize(self, text: str) -> str:
        return " ".join(_NON_WORD.sub(" ", text.lower()).split())

    def tokenize(self, audio: np.ndarray) -> list[int]:
        """Joint codes of a whole clip (voice-cloning samples): the same computation as a finished turn."""
        ling = LinguisticStream(self.linguistic).finalize(audio)
        sem = SemanticStream(self.semantic).finalize(audio)
        return fmt.interleave(ling, sem)


class StepAudioStream:
    def __init__(self, tokenizer: StepAudioTokenizer) -> None:
        self._tokenizer = tokenizer
        self._linguistic = LinguisticStream(tokenizer.linguistic)
        self._semantic = SemanticStream(tokenizer.semantic)
        self._transcript = tokenizer.transcripts.open()

    @property
    def groups(self) -> int:
        """Whole groups final so far (what the stream has emitted)."""
        return fmt.group_count(len(self._linguistic.codes), len(self._semantic.codes))

    def codes(self) -> list[int]:
        return fmt.interleave(self._linguistic.codes, self._semantic.codes)

    def reset(self) -> None:
        self._linguistic.reset()
        self._semantic.reset()
        self._transcript.reset()

    def abandon(self) -> None:
        pass  # the codes of every segment are needed by the final pass: a partial pass always runs to the end

    def push_segment(self, turn_audio: np.ndarray) -> str:
        self._linguistic.push(turn_audio)
        self._semantic.push(turn_audio)
        return self._transcript.push(turn_audio)

    def finalize(self, turn_audio: np.ndarray, stop: Callable[[], bool] | None = None) -> UserInput:
        ling = self._linguistic.finalize(turn_audio)
        sem = self._semantic.finalize(turn_audio)
        codes = fmt.interleave(ling, sem)
        content = fmt.audio_text(codes)
        text = self._transcript.finalize(turn_audio, content) if codes else ""
        key = " ".join(map(str, codes))
        return UserInput(text=text, content=content, key=key, audio_tokens=len(codes))
