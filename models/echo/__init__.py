"""A cheap stack for capacity tests: real Silero VAD, no ASR, a canned reply spoken as a tone.

It exercises everything Parley itself does per call (RTP in and out, resampling, VAD, the controller, pacing)
while the "models" cost almost nothing, so a capacity figure measures the engine rather than the models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from models import embedded
from models.interfaces import GenerationOptions, LMDelta, Message, ModelStack, UserInput, VoiceSettings
from realtime.config import Config

RATE = 16000


class EchoTokenizer:
    segment_ms = 0

    def open_stream(self) -> EchoStream:
        return EchoStream()

    def normalize(self, text: str) -> str:
        return text


class EchoStream:
    def push_segment(self, turn_audio: np.ndarray) -> str:
        return ""

    def finalize(self, turn_audio: np.ndarray, stop: Callable[[], bool] | None = None) -> UserInput:
        # The input is the turn's length: two drafts over the same audio compare equal.
        seconds = f"{turn_audio.size / RATE:.2f}"
        text = f"(speech, {seconds} s)"
        return UserInput(text=text, content=text, key=seconds)

    def reset(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class EchoLM:
    name = "echo"

    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[LMDelta]:
        for word in self.reply.split(" "):
            yield LMDelta(text=word + " ")

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class ToneTTS:
    sample_rate = RATE

    def __init__(self, hz: float, ms: int) -> None:
        t = np.arange(RATE * ms // 1000) / RATE
        self._tone = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)

    def stream(self, text: str, voice: VoiceSettings) -> Iterator[np.ndarray]:
        yield self._tone

    def unsupported(self, voice: VoiceSettings) -> list[str]:
        return []


def load(config: Config) -> ModelStack:
    echo = config.models.echo
    return ModelStack(
        name="echo", vad=embedded.load_vad(config), tokenizer=EchoTokenizer(), lm=EchoLM(echo.reply),
        tts=ToneTTS(echo.tone_hz, echo.tone_ms),
        info={"vad": "silero-vad 6.2.3", "lm": "canned reply", "tts": f"{echo.tone_hz:.0f} Hz tone"},
    )
