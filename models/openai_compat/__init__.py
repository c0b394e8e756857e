"""The openai-compatible stack: embedded VAD, tokenizer and TTS with the LM served by any OpenAI-style server."""

from __future__ import annotations

from models.interfaces import ModelStack
from realtime.config import Config


def load(config: Config) -> ModelStack:
    raise NotImplementedError("the openai-compatible stack is not implemented yet")
