"""Five spoken questions on one call: the quick "does it answer, and how fast" check of a running server.

    python -m benchmarks.questions [--url http://127.0.0.1:8080] [--session speculation=off]

Each question is synthesized with hibari-tts, played in real time, and timed from the client's last speech sample
to the first audible reply frame; the reply text comes from `response.done`. For corpus-scale figures use
`benchmarks.latency`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.client import ParleyCall
from benchmarks.corpus.make import TTS_RATE, synthesize
from benchmarks.latency import parse_arms

QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you recommend a good book to read?",
    "What is the boiling point of water?",
)


async def ask_all(url: str, session: dict[str, Any]) -> list[float]:
    call = ParleyCall(url, session={"temperature": 0.0, **session})
    await call.connect()
    lead = np.zeros(TTS_RATE * 3 // 10, np.float32)
    latencies: list[float] = []
    try:
        for question in QUESTIONS:
            speech = synthesize(question, seed=0, rate=TTS_RATE)
            t0 = time.monotonic()
            call.play(np.concatenate([lead, speech]), TTS_RATE, marks={"end": lead.size + speech.size})
            done = await call.wait_for("response.done", timeout=60, after=t0)
            end = call.mic.mark_times["end"]
            onset = call.received.onset_after(end)
            ms = (onset - end) * 1000.0 if onset is not None else float("nan")
            latencies.append(ms)
            response = done["response"]
            print(f"{ms:6.0f} ms  speculative={response['metrics']['speculative']!s:5}  {question} → "
                  f"{response['output_text']}", flush=True)
            await asyncio.sleep(1.0)
    finally:
        await call.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.questions", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--session", action="append", default=[], metavar="KEY=VALUE", help="session override")
    args = p.parse_args(argv)
    try:
        session = parse_arms(None, args.session)[0].overrides
    except ValueError as exc:
        p.error(str(exc))
    latencies = asyncio.run(ask_all(args.url, session))
    heard = [x for x in latencies if x == x]
    if len(heard) < len(latencies):
        print(f"{len(latencies) - len(heard)} question(s) got no audible reply")
        return 1
    print(f"speech end → first reply audio: median {statistics.median(heard):.0f} ms, max {max(heard):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
