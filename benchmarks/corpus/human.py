"""Human read sentences of 2-7 s from Debian's pocketsphinx-testdata (BSD-2), as a latency-harness corpus.

`python -m benchmarks.corpus.human [--out DIR]` writes DIR/*.wav (16 kHz, as recorded) and DIR/scenarios.json:
the sentences spread over a few scenarios of several turns, each turn one whole sentence with its reference
transcript, so the harness reports word error rate beside latency. Only recordings that come with a transcript
are used. DIR defaults to benchmarks/corpus/human/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path("/usr/share/pocketsphinx/test/data")
HERE = Path(__file__).resolve().parent
RATE = 16000
AFTER_MS = 1500  # silence after a sentence while its reply plays


@dataclass(frozen=True)
class Sentence:
    name: str
    path: Path
    transcript: str

    def samples(self) -> np.ndarray:
        """16 kHz float32 mono."""
        if self.path.suffix == ".raw":  # headerless 16 kHz 16-bit little-endian mono
            data = np.frombuffer(self.path.read_bytes(), "<i2")
        else:
            with wave.open(str(self.path), "rb") as w:
                if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                    raise ValueError(f"{self.path}: expected 16 kHz 16-bit mono")
                data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return data.astype(np.float32) / 32768.0


def _transcripts(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        text, _, ident = line.rpartition("(")
        out[ident.strip(") ")] = " ".join(text.replace("<s>", "").replace("</s>", "").split())
    return out


def sentences(data: Path = DATA) -> list[Sentence]:
    """Every recording of 2-7 s with a transcript: five LibriVox sentences, a card-game call, a robot command."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: install Debian's pocketsphinx-testdata (./parley.sh setup test does)")
    librivox = _transcripts(data / "librivox" / "transcription")
    cards = _transcripts(data / "cards" / "cards.transcription")
    out = [Sentence(f"librivox-{k[-4:]}", data / "librivox" / f"{k}.wav", v) for k, v in sorted(librivox.items())]
    out.append(Sentence("cards-005", data / "cards" / "005.wav", cards["005"]))
    # pocketsphinx's own decoder tests expect this transcript of goforward.raw.
    out.append(Sentence("goforward", data / "goforward.raw", "go forward ten meters"))
    return out


def build(out: Path, per_scenario: int = 4) -> dict[str, list[dict[str, Any]]]:
    out.mkdir(parents=True, exist_ok=True)
    turns = []
    for s in sentences():
        samples = s.samples()
        with wave.open(str(out / f"{s.name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        turns.append({"segments": [{"audio": f"{s.name}.wav"}], "after_ms": AFTER_MS, "transcript": s.transcript})
    scenarios = [{"name": f"human-{i // per_scenario}", "turns": turns[i : i + per_scenario]}
                 for i in range(0, len(turns), per_scenario)]
    index = {"scenarios": scenarios}
    (out / "scenarios.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


Index = dict[str, Any]


def builder_main(argv: list[str] | None, module: str, doc: str, build: Callable[[Path], Index],
                 describe: Callable[[Index, Path], str]) -> int:
    """The command line of a recorded-speech corpus: `--out DIR` (default benchmarks/corpus/<name>/), then one
    line saying what was written; a missing recording or a bad file is exit status 2."""
    name = module.rsplit(".", 1)[-1]
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / name, help="output directory (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        index = build(args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {describe(index, args.out)} to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return builder_main(argv, "benchmarks.corpus.human", __doc__ or "", build,
                        lambda index, _: f"{sum(len(s['turns']) for s in index['scenarios'])} sentences")


if __name__ == "__main__":
    raise SystemExit(main())
