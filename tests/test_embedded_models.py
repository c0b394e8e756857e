"""The embedded stack's alternatives load from the assembled packages and do their job."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.assets import ASSETS, model_path, sha256_file
from models.interfaces import GenerationOptions, Message, VoiceSettings

pytestmark = pytest.mark.models


def test_assembled_files_match_their_pins() -> None:
    for asset in ASSETS.values():
        folder = model_path(asset.key)
        for piece in asset.pieces:
            if piece.sha256 and piece.name.endswith(".onnx"):  # the big ones are checked when assembled
                assert sha256_file(folder / piece.name) == piece.sha256


def test_smollm2_answers_through_the_same_lm_adapter() -> None:
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("smollm2-135m") / "model.gguf", "smollm2-135m", 1024, 2)
    assert not lm.supports_tools  # its template has no tool section: tools are simply not offered

    async def reply() -> str:
        out = ""
        messages = [Message("system", "Answer briefly."), Message("user", "Say hello.")]
        async for d in lm.stream(messages, GenerationOptions(max_tokens=20, temperature=0.0)):
            out += d.text
        return out

    assert asyncio.run(reply()).strip()


def test_whisper_tiny_en_transcribes() -> None:
    from models.embedded.whisper import WhisperTokenizer
    from tests.conftest import speak
    from tests.test_audio_path import to16k

    audio, rate = speak("Good morning, how are you today?")
    tok = WhisperTokenizer(model_path("whisper-tiny.en"), 1000, 2, "en")
    result = tok.open_stream().finalize(to16k(audio, rate))
    assert result.key == "good morning how are you today"


def test_hibari_reports_what_it_cannot_do() -> None:
    from models.embedded.hibari_tts import HibariTTS

    tts = HibariTTS(1)
    assert tts.unsupported(VoiceSettings(voice="heart", speed=1.3)) == []
    assert set(tts.unsupported(VoiceSettings(voice="fenrir", emotion="happy"))) == {"voice", "emotion"}
    slow = np.concatenate(list(tts.stream("One two three.", VoiceSettings(speed=0.7))))
    fast = np.concatenate(list(tts.stream("One two three.", VoiceSettings(speed=1.5))))
    assert slow.size > fast.size * 1.5, "speed is applied"
    # Sentences start speaking at once and end with a short pause, not hibari's 0.2-0.5 s pads.
    frame = tts.sample_rate // 100
    levels = [float(np.sqrt(np.mean(fast[i : i + frame] ** 2))) for i in range(0, fast.size - frame, frame)]
    voiced = [i for i, lv in enumerate(levels) if lv > 10 ** (-45 / 20)]
    assert voiced[0] <= 3 and len(levels) - voiced[-1] <= 17
