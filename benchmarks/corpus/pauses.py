"""Human read sentences split by a mid-sentence pause, and the same sentences whole: a turn-taking corpus.

`python -m benchmarks.corpus.pauses [--out DIR]` takes the recordings `benchmarks.corpus.human` uses
(Debian's pocketsphinx-testdata), finds their word boundaries with faster-whisper (`benchmarks.corpus.words`)
and writes DIR/*.wav and DIR/scenarios.json with two kinds of turns, each with the sentence's full reference
transcript:

- *split*: a sentence of at least MIN_WORDS words cut at a mid-sentence word boundary (at least two words either
  side, not after a comma or a full stop, where the speech dips to near the noise floor: `words.split_points`)
  into two WAVs with a `{"pause_ms": N}` segment between, N in PAUSES_MS, each N on PER_PAUSE different
  sentences/boundaries; a reply before the second part is a false cut-off (the harness counts it as a false end
  of turn);
- *complete*: every sentence whole, so end-of-turn latency on complete sentences comes from the same run.

The choice is deterministic: sentences take turns, each giving its middle boundary first, then its quartiles;
a cut is used only when whisper, run on each part alone, hears the same words either side of it (`clean_cut`);
pause lengths cycle over the picks. DIR/cuts.json lists every cut (the words either side, its time, its pause).
DIR defaults to benchmarks/corpus/pauses/ (ignored by git).
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus.human import AFTER_MS, RATE, Sentence, builder_main, sentences
from benchmarks.corpus.words import QUIET_DB, Word, split_points, transcribe, word_bounds

PAUSES_MS = (400, 600, 900, 1200)
PER_PAUSE = 4  # split turns per pause length (not many more cuts of the 7 sentences pass `clean_cut`)
PER_SCENARIO = 6  # turns per scenario (one call)
# Shorter sentences are used whole only: "go forward | ten meters" leaves a complete command before the pause.
MIN_WORDS = 6
FADE_S = 0.005  # at a cut, so the cut itself makes no click
SPREAD = (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)  # where in a sentence its 1st, 2nd, ... boundary lies


def spread(cuts: list[float]) -> list[float]:
    """The cuts in the order they are used: middle first, then the quartiles, then the rest."""
    left = list(range(len(cuts)))
    order = []
    for frac in SPREAD:
        if not left:
            break
        target = frac * (len(cuts) - 1)
        best = min(left, key=lambda i: (abs(i - target), i))
        order.append(best)
        left.remove(best)
    return [cuts[i] for i in order + left]


def choose(cuts: list[list[float]], n: int, pauses: tuple[int, ...] = PAUSES_MS,
           ok: Callable[[int, float], bool] = lambda i, cut: True) -> list[tuple[int, float, int]]:
    """n (sentence index, cut, pause_ms): sentences in turn, each cut at most once and only if `ok`, pause
    lengths cycling over the picks."""
    queues = [spread(c) for c in cuts]
    out: list[tuple[int, float, int]] = []
    while len(out) < n and any(queues):
        for i, queue in enumerate(queues):
            while queue and len(out) < n:
                cut = queue.pop(0)
                if ok(i, cut):
                    out.append((i, cut, pauses[len(out) % len(pauses)]))
                    break
    return out


def _norm(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def clean_cut(samples: np.ndarray, words: list[Word], cut_s: float) -> bool:
    """Whisper, run on each part alone, ends the first with the word before the cut and starts the second with
    the word after it: the cut went between the two words, not through one. (Run on the whole sentence with
    silence at the cut instead, whisper stretches a word over the silence and hides a bad cut.)"""
    before, after = _words_around(words, cut_s)
    cut = round(cut_s * RATE)
    head, tail = transcribe(samples[:cut]), transcribe(samples[cut:])
    return bool(head and tail) and _norm(head[-1]) == _norm(before) and _norm(tail[0]) == _norm(after)


def _words_around(words: list[Word], cut_s: float) -> tuple[str, str]:
    """The words either side of a cut (by their middles)."""
    before = [w for w, start, end in words if (start + end) / 2 < cut_s]
    after = [w for w, start, end in words if (start + end) / 2 >= cut_s]
    return (before[-1] if before else ""), (after[0] if after else "")


def _write(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _faded(samples: np.ndarray, head: bool, tail: bool) -> np.ndarray:
    out = samples.astype(np.float32, copy=True)
    n = min(int(FADE_S * RATE), out.size)
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if head:
        out[:n] *= ramp
    if tail:
        out[out.size - n :] *= ramp[::-1]
    return out


def build(out: Path, per_pause: int = PER_PAUSE, per_scenario: int = PER_SCENARIO,
          source: list[Sentence] | None = None) -> dict[str, Any]:
    """Write the corpus to `out` from `source` (default: every sentence of `benchmarks.corpus.human`)."""
    out.mkdir(parents=True, exist_ok=True)
    found = sentences() if source is None else source
    audio = [s.samples() for s in found]
    words = [word_bounds(x) for x in audio]
    cuts = [split_points(x, w, QUIET_DB) if len(w) >= MIN_WORDS else [] for x, w in zip(audio, words, strict=True)]
    picks = choose(cuts, per_pause * len(PAUSES_MS), ok=lambda i, cut: clean_cut(audio[i], words[i], cut))
    complete = []
    for s, x in zip(found, audio, strict=True):
        _write(out / f"{s.name}.wav", x)
        complete.append({"segments": [{"audio": f"{s.name}.wav"}], "after_ms": AFTER_MS, "transcript": s.transcript})
    split_turns, manifest = [], []
    for i, cut_s, pause in picks:
        s, x = found[i], audio[i]
        cut = round(cut_s * RATE)
        stem = f"{s.name}-at{cut * 1000 // RATE:04d}"
        _write(out / f"{stem}a.wav", _faded(x[:cut], head=False, tail=True))
        _write(out / f"{stem}b.wav", _faded(x[cut:], head=True, tail=False))
        split_turns.append({"segments": [{"audio": f"{stem}a.wav"}, {"pause_ms": pause}, {"audio": f"{stem}b.wav"}],
                            "after_ms": AFTER_MS, "transcript": s.transcript})
        before, after = _words_around(words[i], cut_s)
        manifest.append({"sentence": s.name, "cut_s": round(cut / RATE, 3), "before": before, "after": after,
                         "pause_ms": pause})
    # A complete sentence, then one split turn of each pause length, and so on: every scenario holds both kinds.
    turns: list[dict[str, Any]] = []
    step = len(PAUSES_MS)
    for k in range(max(len(complete), -(-len(split_turns) // step))):
        turns += complete[k : k + 1] + split_turns[k * step : (k + 1) * step]
    scenarios = [{"name": f"pauses-{i // per_scenario}", "turns": turns[i : i + per_scenario]}
                 for i in range(0, len(turns), per_scenario)]
    index = {"scenarios": scenarios}
    (out / "scenarios.json").write_text(json.dumps(index, indent=1) + "\n")
    (out / "cuts.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return index


def describe(index: dict[str, Any], root: Path) -> str:
    """Turns per pause length and the played time (audio, pauses and after_ms; replies add to it)."""
    counts: dict[str, int] = {}
    seconds = 0.0
    for scenario in index["scenarios"]:
        for turn in scenario["turns"]:
            pauses = [seg["pause_ms"] for seg in turn["segments"] if "pause_ms" in seg]
            key = f"{max(pauses)} ms" if pauses else "complete"
            counts[key] = counts.get(key, 0) + 1
            seconds += (sum(pauses) + turn["after_ms"]) / 1000.0
            for seg in turn["segments"]:
                if "audio" in seg:
                    with wave.open(str(root / seg["audio"]), "rb") as w:
                        seconds += w.getnframes() / w.getframerate()
    parts = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"{sum(counts.values())} turns ({parts}) in {len(index['scenarios'])} scenarios, {seconds:.0f} s of audio"


def main(argv: list[str] | None = None) -> int:
    return builder_main(argv, "benchmarks.corpus.pauses", __doc__ or "", build, describe)


if __name__ == "__main__":
    raise SystemExit(main())
