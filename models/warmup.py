"""Warm-up: every stage of a loaded stack runs once, on real audio, before the server says it is ready.

A model that loads but cannot run (a llama.cpp build that faults on this CPU, a truncated file, a missing ONNX
operator) must stop start-up with its name on the error, not fail the first caller. So the warm-up goes through
the stages a call uses, in the order a call uses them: the VAD on a frame, the TTS on a sentence, the tokenizer on
that sentence's audio (one real ASR pass), the turn detector (where the stack has one) on the same turn, and, in the
engine, one LM decode with the real system prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from models.interfaces import ModelStack, VoiceSettings
from realtime.audio import ENGINE_RATE, resample

T = TypeVar("T")
SENTENCE = "Hello, can you hear me?"
REMEDY = ("Run ./parley.sh setup serve: it re-assembles and checks every model (under $PARLEY_MODELS) and, for the "
          "embedded LM, rebuilds llama-cpp-python portably if .whl/ is deleted first.")


class WarmUpError(RuntimeError):
    """A stage failed to load or to run once; the message names the stage, the model and the remedy."""

    def __init__(self, stage: str, model: str, cause: str, remedy: str = REMEDY, what: str = "failed its warm-up"
                 ) -> None:
        self.stage, self.model = stage, model
        super().__init__(f"the {stage} model ({model}) {what}: {cause}. {remedy}")


@dataclass
class WarmUpReport:
    stage_ms: dict[str, float] = field(default_factory=dict)
    transcript: str = ""


def model_name(stack: ModelStack, stage: str) -> str:
    return str(stack.info.get(stage, f"{stack.name} {stage}"))


def timed(report: WarmUpReport, stack: ModelStack, stage: str, fn: Callable[[], T]) -> T:
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        raise WarmUpError(stage, model_name(stack, stage), f"{type(exc).__name__}: {exc}") from exc
    report.stage_ms[stage] = round((time.perf_counter() - t0) * 1000, 1)
    return result


def warm_up_audio_stages(stack: ModelStack) -> WarmUpReport:
    """VAD, TTS, ASR and the turn detector once each (blocking: run it in an executor). The LM is warmed by the
    engine."""
    report = WarmUpReport()
    timed(report, stack, "vad",
          lambda: stack.vad.open_stream().probability(np.zeros(stack.vad.frame_samples, np.float32)))

    def synthesize() -> np.ndarray:
        chunks = list(stack.tts.stream(SENTENCE, VoiceSettings()))
        if not chunks or sum(c.size for c in chunks) == 0:
            raise RuntimeError("it produced no audio")
        return np.concatenate(chunks).astype(np.float32)

    speech = timed(report, stack, "tts", synthesize)
    tail = np.zeros(ENGINE_RATE // 4, np.float32)  # the pause that ends a turn
    turn = np.concatenate([resample(speech, stack.tts.sample_rate, ENGINE_RATE), tail])
    report.transcript = timed(report, stack, "asr", lambda: stack.tokenizer.open_stream().finalize(turn)).text
    detector = stack.turn
    if detector is not None:
        timed(report, stack, "turn", lambda: detector.probability(turn))
    return report
