"""A WebRTC call on the `step-audio` stack, on tiny synthetic weights and the CPU.

`server.py` loads the stack from folders laid out like the release (models/step_audio/synthetic.py) and a real
caller speaks to it: the engine feeds the streaming tokenizer, the chat model answers the `<audio_N>` turn, TTS-3B
and the chunked decoder speak (noise, with these weights) at 22.05 kHz through the resampler to the call. What
this shows is the wiring under the real engine — speculation included — not the quality of the real models.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.client import ParleyCall
from models.step_audio import synthetic
from tests.conftest import run_server, silence, speak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
RATE = 24000


def config(folders: synthetic.SyntheticFolders) -> str:
    return f"""
[server]
max_sessions = 1

[session]
voice = "Tingting"
max_response_tokens = 16
temperature = 0.7
tools = false

[models]
stack = "step-audio"

[models.step_audio]
tokenizer_dir = "{folders.tokenizer_dir}"
chat_dir = "{folders.chat_dir}"
tts_dir = "{folders.tts_dir}"
device = "cpu"
dtype = "float32"
transcript = "chat"
tts_max_tokens = 40
"""


async def test_a_call_on_the_step_audio_stack(tmp_path: Path) -> None:
    folders = synthetic.build(tmp_path / "models")
    hello = np.concatenate([silence(300), speak("Hello there, how are you today?")[0], silence(1500)])
    with run_server(tmp_path, config(folders)) as url:
        call = ParleyCall(url)
        await call.connect()
        await asyncio.sleep(0.5)
        try:
            created = call.of_type("session.created")[0]["session"]
            assert created["stack"] == "step-audio"
            t0 = time.monotonic()
            await call.play_and_wait(hello, RATE)
            done = await call.wait_for("response.done", timeout=120, after=t0)
            assert done["response"]["status"] == "completed", done
            assert done["response"]["output_text"]  # the synthetic chat model's gibberish
            item = await call.wait_for("conversation.item.input_audio_transcription.completed", after=t0)
            assert item["transcript"]  # Step-Audio-Chat's own transcript of the audio turn
            assert call.of_type("speculation.started")  # drafts run on this stack too
            # Reply audio reached the caller: 22.05 kHz decoder chunks, resampled, paced as 20 ms frames.
            heard = [lv for at, lv in zip(call.received.times, call.received.levels, strict=True)
                     if at > t0 and lv > -80]
            assert len(heard) * 20 >= 500, f"{len(heard)} audible frames"
        finally:
            await call.close()
