"""The embedded stack: Silero VAD, faster-whisper, llama.cpp, hibari-tts and Smart Turn, all on the CPU and offline.

Each stage has a `load_*` factory here (not named after its module: importing `models.embedded.whisper` would
rebind a function called `whisper`) so the other stacks that reuse embedded stages (openai, step-audio, echo) build them
the same way. Imports are local so a process that runs another stack never loads libraries it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from models.assets import model_path
from models.core_gate import CoreGate
from models.interfaces import ModelStack
from models.warmup import WarmUpError
from realtime.config import Config

if TYPE_CHECKING:
    from models.embedded.hibari_tts import HibariTTS
    from models.embedded.llama import LlamaLM
    from models.embedded.silero import SileroVad
    from models.embedded.smart_turn import SmartTurn
    from models.embedded.whisper import WhisperTokenizer

T = TypeVar("T")
INFO = {"vad": "silero-vad 6.2.3", "tts": "hibari-tts 0.2.1 (heart)", "turn": "smart-turn-v3.2"}


def load_vad(config: Config) -> SileroVad:
    from models.embedded.silero import SileroVad

    return SileroVad(model_path("silero-vad", config.models.embedded.model_dir) / "silero_vad.onnx")


def load_turn_detector(config: Config) -> SmartTurn:
    from models.embedded.smart_turn import SmartTurn

    return SmartTurn(model_path("smart-turn-v3.2", config.models.embedded.model_dir) / "model.onnx")


def load_tokenizer(config: Config, language: str | None = None, gate: CoreGate | None = None) -> WhisperTokenizer:
    """`language` overrides the configured one ("" = detect: Step-Audio transcribes any language)."""
    from models.embedded.whisper import WhisperTokenizer

    emb = config.models.embedded
    return WhisperTokenizer(model_path(emb.asr, emb.model_dir), emb.asr_segment_ms, emb.asr_threads,
                            emb.language if language is None else language, emb.asr_window_s,
                            emb.asr_incremental, gate)


def load_tts(config: Config, gate: CoreGate | None = None) -> HibariTTS:
    from models.embedded.hibari_tts import HibariTTS

    return HibariTTS(config.models.embedded.tts_threads, gate)


def load_lm(config: Config, gate: CoreGate | None = None) -> LlamaLM:
    from models.embedded.llama import LlamaLM

    emb = config.models.embedded
    return LlamaLM(model_path(emb.lm, emb.model_dir) / "model.gguf", emb.lm, emb.lm_context, emb.lm_threads,
                   emb.tool_results_as_text, gate=gate)


def load(config: Config) -> ModelStack:
    emb = config.models.embedded
    # Only here do all three heavy stages share this process's cores (other stacks run the LM elsewhere).
    gate = CoreGate() if emb.stages_take_turns else None
    return ModelStack(
        name="embedded", vad=loading("vad", INFO["vad"], lambda: load_vad(config)),
        tokenizer=loading("asr", emb.asr, lambda: load_tokenizer(config, gate=gate)),
        lm=loading("lm", emb.lm, lambda: load_lm(config, gate)),
        tts=loading("tts", INFO["tts"], lambda: load_tts(config, gate)),
        turn=loading("turn", INFO["turn"], lambda: load_turn_detector(config)),
        transcript_turn=emb.lm_turn_score,
        info={**INFO, "asr": emb.asr, "lm": emb.lm},
    )


def loading(stage: str, model: str, load_stage: Callable[[], T]) -> T:
    """One stage's loader, its failure named by stage and model (a start-up error, not a traceback to decode)."""
    try:
        return load_stage()
    except Exception as exc:
        raise WarmUpError(stage, model, f"{type(exc).__name__}: {exc}", what="failed to load") from exc
