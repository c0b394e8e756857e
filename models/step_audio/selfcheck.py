"""Step-Audio end to end on one clip: tokenizer -> chat -> TTS -> decoder, with timings.

    python -m models.step_audio.selfcheck                 # tiny synthetic weights, CPU, seconds
    python -m models.step_audio.selfcheck --tokenizer-dir /models/Step-Audio-Tokenizer \\
        --chat-dir /models/Step-Audio-Chat --tts-dir /models/Step-Audio-TTS-3B --device cuda   # the GPU smoke test
    python -m models.step_audio.selfcheck --config configs/step-audio.toml

It prints the clip's interleaved `<audio_N>` string, whether streaming tokenization matched a one-shot pass, the
chat model's reply and the synthesized duration. With synthetic weights the reply is gibberish and the audio
noise: what it shows is that every stage loads, runs, streams and hands the next one what it expects.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.interfaces import GenerationOptions, Message, ModelStack, VoiceSettings
from realtime.config import Config, StepAudioStackConfig, load_config

CLIP_SECONDS = 2.0
RATE = 16000


def clip(path: str) -> np.ndarray:
    if path:
        from models.step_audio.speakers import read_wav

        audio = read_wav(Path(path))
    else:
        try:
            from hibari import SAMPLE_RATE, Hibari

            from realtime.audio import resample

            audio = resample(Hibari(voice="heart")("Hello, how are you today?"), SAMPLE_RATE, RATE)
        except Exception:  # no offline voice: a synthetic buzz will do for a pipeline check
            from models.step_audio.synthetic import voice_like

            audio = voice_like(CLIP_SECONDS, np.random.default_rng(0))
    n = int(CLIP_SECONDS * RATE)
    return np.pad(audio, (0, max(0, n - audio.size)))[:n].astype(np.float32)


def build_config(args: argparse.Namespace, synthetic_root: Path | None) -> Config:
    config = load_config(args.config) if args.config else Config()
    sa = config.models.step_audio
    changes: dict[str, object] = {}
    if synthetic_root is not None:
        from models.step_audio import synthetic

        folders = synthetic.build(synthetic_root)
        changes.update(tokenizer_dir=str(folders.tokenizer_dir), chat_dir=str(folders.chat_dir),
                       tts_dir=str(folders.tts_dir), device="cpu", dtype="float32", chat_backend="transformers",
                       transcript="chat", tts_max_tokens=60)
    for key in ("tokenizer_dir", "chat_dir", "tts_dir", "device", "dtype", "transcript"):
        value = getattr(args, key)
        if value:
            changes[key] = value
    sa = StepAudioStackConfig(**{**dataclasses.asdict(sa), **changes})
    models = dataclasses.replace(config.models, stack="step-audio", step_audio=sa)
    return dataclasses.replace(config, models=models)


def run(stack: ModelStack, audio: np.ndarray, instructions: str, out: str) -> bool:
    ok = True
    # 1. tokenizer: one segment at a time as the engine feeds it, then the rest at finalize
    seg = stack.tokenizer.segment_ms * RATE // 1000
    stream = stack.tokenizer.open_stream()
    t0 = time.perf_counter()
    for end in range(seg, audio.size + 1, seg):
        stream.push_segment(audio[:end])
    t_push = time.perf_counter() - t0
    streamed = getattr(stream, "groups", None)
    t0 = time.perf_counter()
    user = stream.finalize(audio)
    t_final = time.perf_counter() - t0
    offline = stack.tokenizer.open_stream().finalize(audio)
    same = offline.key == user.key
    ok &= same and user.audio_tokens > 0
    print(f"[tokenizer] {audio.size / RATE:.1f} s clip: {user.audio_tokens} audio tokens "
          f"({user.audio_tokens // 5} groups; {streamed} emitted while streaming), segments {t_push * 1000:.0f} ms, "
          f"finalize {t_final * 1000:.0f} ms; streaming == one pass: {'yes' if same else 'NO'}")
    print(f"[tokenizer] transcript: {user.text!r}")
    print(f"[tokenizer] content: {user.content}")

    # 2. chat
    async def chat() -> tuple[str, float]:
        t = time.perf_counter()
        first = 0.0
        parts = []
        messages = [Message("system", instructions), Message("user", user.content)]
        async for delta in stack.lm.stream(messages, GenerationOptions(max_tokens=24, temperature=0.7)):
            first = first or time.perf_counter() - t
            parts.append(delta.text)
        return "".join(parts), first

    reply, ttft = asyncio.run(chat())
    ok &= bool(reply.strip())
    print(f"[chat] first token {ttft * 1000:.0f} ms; reply: {reply!r}")

    # 3. TTS + decoder, streaming
    text = reply.strip() or "你好。"
    t0 = time.perf_counter()
    chunks: list[np.ndarray] = []
    first_audio = 0.0
    for chunk in stack.tts.stream(text, VoiceSettings()):
        first_audio = first_audio or time.perf_counter() - t0
        chunks.append(chunk)
    total = time.perf_counter() - t0
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    seconds = wave.size / stack.tts.sample_rate
    ok &= seconds > 0
    print(f"[tts] {len(chunks)} chunks, first after {first_audio * 1000:.0f} ms, {seconds:.2f} s of audio "
          f"at {stack.tts.sample_rate} Hz in {total:.2f} s")
    if out:
        from models.step_audio.speakers import write_wav

        write_wav(Path(out), wave, stack.tts.sample_rate)
        print(f"[tts] wrote {out}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.step_audio.selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="", help="a Parley config whose [models.step_audio] to use")
    p.add_argument("--tokenizer-dir", dest="tokenizer_dir", default="")
    p.add_argument("--chat-dir", dest="chat_dir", default="")
    p.add_argument("--tts-dir", dest="tts_dir", default="")
    p.add_argument("--device", default="")
    p.add_argument("--dtype", default="", choices=["", "bfloat16", "float16", "float32"])
    p.add_argument("--transcript", default="", choices=["", "whisper", "chat", "none"])
    p.add_argument("--clip", default="", help="a WAV to use instead of the built-in 2 s phrase")
    p.add_argument("--out", default="", help="write the synthesized audio here (WAV)")
    args = p.parse_args(argv)
    real = bool(args.config or args.tokenizer_dir or args.chat_dir or args.tts_dir)
    from models.step_audio import load

    with tempfile.TemporaryDirectory(prefix="parley-step-audio-") as tmp:
        config = build_config(args, None if real else Path(tmp))
        where = "real folders" if real else f"synthetic weights in {tmp}"
        print(f"[load] {where} on {config.models.step_audio.device}")
        t0 = time.perf_counter()
        stack = load(config)
        print(f"[load] {time.perf_counter() - t0:.1f} s: {stack.info}")
        ok = run(stack, clip(args.clip), config.session.instructions, args.out)
    print("[selfcheck] ok" if ok else "[selfcheck] FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
