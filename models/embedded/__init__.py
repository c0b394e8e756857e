"""The embedded stack: Silero VAD, faster-whisper, llama.cpp and hibari-tts, all on the CPU and offline."""

from __future__ import annotations

from models.assets import model_path
from models.interfaces import ModelStack
from realtime.config import Config


def load(config: Config) -> ModelStack:
    # Imports are local so a process that runs another stack never loads these libraries.
    from models.embedded.hibari_tts import HibariTTS
    from models.embedded.llama import LlamaLM
    from models.embedded.silero import SileroVad
    from models.embedded.whisper import WhisperTokenizer

    emb = config.models.embedded
    root = emb.model_dir
    vad = SileroVad(model_path("silero-vad", root) / "silero_vad.onnx")
    asr = WhisperTokenizer(model_path(emb.asr, root), emb.asr_segment_ms, emb.asr_threads, emb.language)
    lm = LlamaLM(model_path(emb.lm, root) / "model.gguf", emb.lm, emb.lm_context, emb.lm_threads,
                 emb.tool_results_as_text)
    tts = HibariTTS(emb.tts_threads)
    return ModelStack(
        name="embedded", vad=vad, tokenizer=asr, lm=lm, tts=tts,
        info={"vad": "silero-vad 6.2.3", "asr": emb.asr, "lm": emb.lm, "tts": "hibari-tts 0.2.1 (heart)"},
    )
