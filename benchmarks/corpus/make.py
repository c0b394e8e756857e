"""Synthesize the standard corpus: `python -m benchmarks.corpus [--out DIR] [--rate 24000|16000|8000]`.

Reads spec.json beside this file, draws every within-turn pause from its pause model (a mixture of lognormals,
seeded), synthesizes each phrase with hibari-tts (seeded per phrase), trims it to its speech energy and writes
DIR/NAME-tT-pP.wav plus DIR/scenarios.json in the harness's scenario format. The same spec and seeds give the same
pauses and the same audio. DIR defaults to benchmarks/corpus/audio/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scenarios import speech_bounds
from realtime.audio import Resampler, to_int16

HERE = Path(__file__).resolve().parent
SPEC = HERE / "spec.json"
TTS_RATE = 24000


@dataclass(frozen=True)
class PauseComponent:
    name: str
    weight: float
    median_ms: float
    sigma: float


class PauseModel:
    """Silent-pause durations: a mixture of lognormals, one per pause category, clipped to [min_ms, max_ms]."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.components = [PauseComponent(c["name"], float(c["weight"]), float(c["median_ms"]), float(c["sigma"]))
                           for c in raw["components"]]
        self.min_ms = int(raw["min_ms"])
        self.max_ms = int(raw["max_ms"])
        total = sum(c.weight for c in self.components)
        if not self.components or total <= 0:
            raise ValueError("pause_model needs components with positive weights")

    def draw(self, rng: random.Random) -> tuple[int, str]:
        component = rng.choices(self.components, weights=[c.weight for c in self.components])[0]
        ms = math.exp(rng.gauss(math.log(component.median_ms), component.sigma))
        return int(min(self.max_ms, max(self.min_ms, round(ms)))), component.name


def plan(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Scenarios with drawn pauses: [{name, turns: [{phrases, pauses: [(ms, category)]}]}] (no audio yet)."""
    rng = random.Random(spec["seed"])
    model = PauseModel(spec["pause_model"])
    out = []
    for scenario in spec["scenarios"]:
        turns = []
        for phrases in scenario["turns"]:
            turns.append({"phrases": list(phrases), "pauses": [model.draw(rng) for _ in phrases[1:]]})
        out.append({"name": scenario["name"], "turns": turns})
    return out


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(samples).tobytes())


def synthesize(text: str, seed: int, rate: int) -> np.ndarray:
    from hibari import Hibari

    global _tts
    if _tts is None:
        _tts = Hibari(voice="heart")
    audio = np.asarray(_tts(text, seed=seed), np.float32)
    bounds = speech_bounds(audio, TTS_RATE)
    if bounds is None:
        raise RuntimeError(f"hibari-tts produced silence for {text!r}")
    audio = audio[bounds[0] : bounds[1]]
    if rate != TTS_RATE:
        resampler = Resampler(TTS_RATE, rate)
        tail = resampler.process(np.zeros(TTS_RATE // 10, np.float32))
        audio = np.concatenate([resampler.process(audio), tail])[: audio.size * rate // TTS_RATE]
    return audio


_tts: Any = None


def build(out: Path, rate: int, spec_path: Path = SPEC) -> dict[str, Any]:
    spec = json.loads(spec_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    scenarios = []
    phrase_index = 0
    for scenario in plan(spec):
        turns = []
        for t, turn in enumerate(scenario["turns"]):
            segments: list[dict[str, Any]] = []
            for p, phrase in enumerate(turn["phrases"]):
                if p:
                    segments.append({"pause_ms": turn["pauses"][p - 1][0]})
                name = f"{scenario['name']}-t{t}-p{p}.wav"
                write_wav(out / name, synthesize(phrase, phrase_index, rate), rate)
                phrase_index += 1
                segments.append({"audio": name})
            turns.append({"segments": segments, "after_ms": int(spec["after_ms"]),
                          "transcript": " ".join(turn["phrases"])})
        scenarios.append({"name": scenario["name"], "turns": turns})
    index = {"scenarios": scenarios}
    (out / "scenarios.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def pause_table(spec_path: Path = SPEC) -> list[tuple[str, int, int, str]]:
    """(scenario, turn, ms, category) of every drawn pause: what README's corpus table lists."""
    spec = json.loads(spec_path.read_text())
    return [(s["name"], t, ms, category)
            for s in plan(spec) for t, turn in enumerate(s["turns"]) for ms, category in turn["pauses"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "audio", help="output directory (default: %(default)s)")
    p.add_argument("--rate", type=int, default=TTS_RATE, choices=(8000, 16000, 24000, 48000),
                   help="WAV sample rate; 8000 makes a telephone-band copy")
    p.add_argument("--pauses", action="store_true", help="only print the drawn pauses")
    args = p.parse_args(argv)
    if args.pauses:
        for name, turn, ms, category in pause_table():
            print(f"{name:10s} turn {turn}  {ms:5d} ms  {category}")
        return 0
    index = build(args.out, args.rate)
    turns = sum(len(s["turns"]) for s in index["scenarios"])
    print(f"wrote {len(index['scenarios'])} scenarios, {turns} turns to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
