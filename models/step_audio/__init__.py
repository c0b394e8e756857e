"""The Step-Audio stack (GPU): dual-codebook tokenizer, Step-Audio-Chat and TTS-3B with its decoder."""

from __future__ import annotations

from models.interfaces import ModelStack
from realtime.config import Config


def load(config: Config) -> ModelStack:
    raise NotImplementedError("the step-audio stack is not implemented yet")
