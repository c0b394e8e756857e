"""Voice-to-voice on Parley's own path vs the OpenAI Realtime paths, same questions, same server, interleaved.

    python -m benchmarks.realtime_compare --url http://127.0.0.1:8080 [--rounds 2] [--out bench-out/rt.json]

Paths: `offer` (POST /offer, WebRTC, `events` channel), `calls` (POST /v1/realtime/calls, WebRTC, `oai-events`)
and `websocket` (GET /v1/realtime with the official `openai` SDK, pcm16 24 kHz in `input_audio_buffer.append`,
reply in `response.output_audio.delta`). Each question is synthesized once and sent in real time (20 ms chunks on
an absolute schedule, like a microphone); voice-to-voice is the client's last speech sample → the first reply
audio arriving at the client (an audible RTP frame, or the first audio delta). Each round runs every path once,
in a rotated order, so drift in the machine's load hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.client import ParleyCall
from benchmarks.corpus.make import TTS_RATE, synthesize
from benchmarks.questions import QUESTIONS

PATHS = ("offer", "calls", "websocket")
CHUNK = TTS_RATE // 50  # 20 ms


async def webrtc_turns(url: str, path: str, clips: list[np.ndarray]) -> list[float]:
    call = ParleyCall(url, session={"temperature": 0.0}) if path == "offer" else ParleyCall(
        url, openai=True, extensions=True, session={"type": "realtime", "parley": {"temperature": 0.0}})
    await call.connect()
    lead = np.zeros(TTS_RATE * 3 // 10, np.float32)
    out: list[float] = []
    try:
        for clip in clips:
            t0 = time.monotonic()
            call.play(np.concatenate([lead, clip]), TTS_RATE, marks={"end": lead.size + clip.size})
            await call.wait_for("response.done", timeout=60, after=t0)
            end = call.mic.mark_times["end"]
            onset = call.received.onset_after(end)
            out.append((onset - end) * 1000.0 if onset is not None else float("nan"))
            await asyncio.sleep(1.0)
    finally:
        await call.close()
    return out


async def send_in_real_time(conn: Any, pcm: np.ndarray, speech_end: int, marks: dict[str, float]) -> None:
    """Append `pcm` 20 ms at a time on an absolute schedule; marks["end"] = when sample `speech_end` went out."""
    start = time.monotonic()
    for k, i in enumerate(range(0, pcm.size, CHUNK)):
        await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + CHUNK].tobytes()).decode())
        if i <= speech_end < i + CHUNK:
            marks["end"] = time.monotonic()


async def websocket_turns(url: str, clips: list[np.ndarray]) -> list[float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused-on-loopback", max_retries=0)
    lead, tail = np.zeros(TTS_RATE * 3 // 10, np.float32), np.zeros(TTS_RATE * 3 // 2, np.float32)
    out: list[float] = []
    async with client.realtime.connect(model="parley") as conn:
        # `parley` is Parley's extension field of the GA session (greedy decoding, as on the other paths).
        update: Any = {"type": "session.update", "session": {"type": "realtime", "parley": {"temperature": 0.0}}}
        await conn.send(update)
        for clip in clips:
            pcm = (np.clip(np.concatenate([lead, clip, tail]), -1, 1) * 32767).astype("<i2")
            marks: dict[str, float] = {}
            sender = asyncio.create_task(send_in_real_time(conn, pcm, lead.size + clip.size - 1, marks))
            first_audio: float | None = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                event = json.loads(await asyncio.wait_for(conn.recv_bytes(), max(0.1, deadline - time.monotonic())))
                if event["type"] == "response.output_audio.delta" and first_audio is None and "end" in marks:
                    first_audio = time.monotonic()
                if event["type"] == "response.done":
                    break
            await sender
            out.append((first_audio - marks["end"]) * 1000.0 if first_audio and "end" in marks else float("nan"))
            await asyncio.sleep(1.0)
    return out


def summary(xs: list[float]) -> dict[str, Any]:
    heard = sorted(x for x in xs if x == x)
    if not heard:
        return {"n": len(xs), "answered": 0}
    p90 = statistics.quantiles(heard, n=10, method="inclusive")[-1] if len(heard) > 1 else heard[0]
    return {"n": len(xs), "answered": len(heard), "p50_ms": round(statistics.median(heard)),
            "p90_ms": round(p90), "max_ms": round(heard[-1])}


async def run(url: str, rounds: int) -> dict[str, Any]:
    clips = [synthesize(q, seed=0, rate=TTS_RATE) for q in QUESTIONS]
    results: dict[str, list[float]] = {p: [] for p in PATHS}
    for r in range(rounds):
        order = PATHS[r % len(PATHS):] + PATHS[: r % len(PATHS)]
        for path in order:
            turns = await (websocket_turns(url, clips) if path == "websocket" else webrtc_turns(url, path, clips))
            results[path] += turns
            print(f"round {r + 1} {path:9s} " + " ".join(f"{x:5.0f}" for x in turns), flush=True)
    return {"url": url, "rounds": rounds, "questions": list(QUESTIONS),
            "voice_to_voice_ms": {p: summary(xs) for p, xs in results.items()}, "raw_ms": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.realtime_compare", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/realtime-compare.json"))
    args = p.parse_args(argv)
    report = asyncio.run(run(args.url.rstrip("/"), args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for path, s in report["voice_to_voice_ms"].items():
        print(f"{path:9s} {s}")
    return 0 if all(s.get("answered") == s["n"] for s in report["voice_to_voice_ms"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
