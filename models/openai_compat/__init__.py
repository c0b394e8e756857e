"""The openai-compatible stack: embedded VAD, tokenizer and TTS with the LM served by any OpenAI-style server."""

from __future__ import annotations

from models.interfaces import ModelStack
from realtime.config import Config


def load(config: Config) -> ModelStack:
    from models import embedded
    from models.openai_compat.client import OpenAILM

    remote = config.models.openai
    return ModelStack(
        name="openai", vad=embedded.load_vad(config), tokenizer=embedded.load_tokenizer(config), lm=OpenAILM(remote),
        tts=embedded.load_tts(config), turn=embedded.load_turn_detector(config),
        info={**embedded.INFO, "asr": config.models.embedded.asr,
              "lm": f"{remote.base_url} ({remote.model or 'first listed model'})"},
    )
