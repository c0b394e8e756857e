"""The openai-compatible stack: embedded VAD, tokenizer and TTS with the LM served by any OpenAI-style server."""

from __future__ import annotations

from models.interfaces import ModelStack
from realtime.config import Config


def load(config: Config) -> ModelStack:
    # The embedded stages are built exactly as models.embedded builds them; only the LM is remote.
    from models.assets import model_path
    from models.embedded.hibari_tts import HibariTTS
    from models.embedded.silero import SileroVad
    from models.embedded.whisper import WhisperTokenizer
    from models.openai_compat.client import OpenAILM

    emb = config.models.embedded
    root = emb.model_dir
    vad = SileroVad(model_path("silero-vad", root) / "silero_vad.onnx")
    asr = WhisperTokenizer(model_path(emb.asr, root), emb.asr_segment_ms, emb.asr_threads, emb.language)
    lm = OpenAILM(config.models.openai)
    tts = HibariTTS(emb.tts_threads)
    return ModelStack(
        name="openai", vad=vad, tokenizer=asr, lm=lm, tts=tts,
        info={"vad": "silero-vad 6.2.3", "asr": emb.asr, "lm": f"{config.models.openai.base_url} "
              f"({config.models.openai.model or 'first listed model'})", "tts": "hibari-tts 0.2.1 (heart)"},
    )
