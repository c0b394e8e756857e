"""A caller that asks a question and then disappears mid-reply (run as a subprocess and SIGKILLed)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from benchmarks.client import ParleyCall
from tests.conftest import silence, speak


async def main(url: str) -> None:
    call = ParleyCall(url, session={"tools": False})
    await call.connect()
    audio, rate = speak("Tell me a long story about a lighthouse keeper.")
    call.play(np.concatenate([silence(300), audio]), rate)
    await call.wait_for("response.created", timeout=60)
    while call.received.onset_after(0) is None or not call.of_type("response.audio_transcript.delta"):
        await asyncio.sleep(0.05)
    print("REPLYING", flush=True)
    await asyncio.sleep(3600)  # the test kills us here, mid-reply


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
