"""The semantic turn detector alone, offline: whole sentences against the same sentences cut mid-way.

`python -m benchmarks.turn_replay [--pauses-ms 0,200] [--words] [--out bench-out/turn-replay.json] [-v]`

Every pocketsphinx-testdata recording that comes with a transcript (five LibriVox sentences, five card-game calls,
a robot command) is scored by Smart Turn v3.2 (models/embedded/smart_turn.py) twice over:

- complete: the recording up to its speech end;
- prefixes: the recording cut at each mid-sentence word boundary (benchmarks/corpus/words.py: whisper-base word
  timestamps, the quietest 10 ms between two words, at least two words either side), up to the speech end before
  the cut, i.e. what the detector would hear had the caller paused there.

Speech ends are dated as the listener dates them: the end of Silero's last 32 ms window at or above 0.5. Each turn is
scored as it is handed over (pause 0) and with silence appended (`--pauses-ms`; 200 ms is what Pipecat's own
analyser feeds the model, its VAD stopping after 0.2 s). For thresholds 0.3-0.8 it reports the share of prefixes
scored at or above the threshold (the caller would have been cut off mid-sentence after the short silence) and of
complete sentences scored below it (the caller waits the longer silence), and the inference time per call (every
call is one 8 s window). No clock or network: the stage's own cost on this machine, one thread.

`--words` also has the LM read each turn's words as Whisper wrote them (models/embedded/message_end.py: the
probability that the message ends there, what a draft reads under `[models.embedded] lm_turn_score`) and reports
what the default eagerness makes of the scores (realtime/endpointing.py), audio alone and fused with the words:
the share of prefixes whose needed silence is shorter than a 400/600/900/1200 ms pause (the caller pausing there
would be cut off) and the silence the complete sentences need.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus.human import DATA, Sentence, sentences
from benchmarks.runinfo import git_commit, machine
from benchmarks.summary import percentiles

RATE = 16000
VAD_THRESHOLD = 0.5  # [session] vad_threshold's default
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def recordings() -> list[Sentence]:
    """Every recording with a transcript: the human corpus's sentences and the short card calls it leaves out."""
    out = sentences()
    have = {s.path for s in out}
    for line in (DATA / "cards" / "cards.transcription").read_text().splitlines():
        text, _, ident = line.rpartition("(")
        path = DATA / "cards" / f"{ident.strip(') ')}.wav"
        if path not in have and path.is_file():
            words = " ".join(text.replace("<s>", "").replace("</s>", "").split())
            out.append(Sentence(f"cards-{path.stem}", path, words))
    return sorted(out, key=lambda s: s.name)


def speech_probabilities(vad: Any, audio: np.ndarray) -> np.ndarray:
    stream = vad.open_stream()
    n = audio.size // vad.frame_samples
    return np.array([stream.probability(audio[i * vad.frame_samples:(i + 1) * vad.frame_samples])
                     for i in range(n)])


def speech_end(probs: np.ndarray, frame: int, before: int) -> int:
    """Sample at which the last speech window ending at or before `before` ends (0: none)."""
    heard = np.nonzero(probs[: before // frame] >= VAD_THRESHOLD)[0]
    return int(heard[-1] + 1) * frame if heard.size else 0


def rates(rows: list[dict[str, Any]], pause_ms: int) -> list[dict[str, Any]]:
    complete = np.array([r["p"][str(pause_ms)] for r in rows if r["kind"] == "complete"])
    prefix = np.array([r["p"][str(pause_ms)] for r in rows if r["kind"] == "prefix"])
    return [{"threshold": t,
             "prefix_judged_complete": round(float(np.mean(prefix >= t)), 3),
             "complete_judged_incomplete": round(float(np.mean(complete < t)), 3)} for t in THRESHOLDS]


PAUSES_MS = (400, 600, 900, 1200)


def decisions(rows: list[dict[str, Any]], fuse: bool) -> dict[str, Any]:
    """What the default eagerness makes of each turn's scores at pause 0: cut-offs per pause, complete waits."""
    from realtime.config import SessionConfig
    from realtime.endpointing import silence_needed_ms

    settings = SessionConfig()

    def needed(r: dict[str, Any]) -> float:
        return silence_needed_ms(settings, r["p"]["0"], r["words_p"] if fuse else None)

    prefix = [needed(r) for r in rows if r["kind"] == "prefix"]
    complete = [needed(r) for r in rows if r["kind"] == "complete"]
    return {"prefixes_cut_off": {str(p): round(float(np.mean([n < p for n in prefix])), 3) for p in PAUSES_MS},
            "complete_needed_ms": percentiles(complete, (50, 90, 100))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.turn_replay", description=__doc__.splitlines()[0])
    p.add_argument("--pauses-ms", default="0,200", help="silence appended after the speech end (comma list)")
    p.add_argument("--out", type=Path, default=Path("bench-out/turn-replay.json"))
    p.add_argument("--words", action="store_true", help="also read each turn's words with the LM (qwen2.5-0.5b)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every scored turn")
    args = p.parse_args(argv)
    pauses = [int(x) for x in args.pauses_ms.split(",")]
    if args.words and "0" not in args.pauses_ms.split(","):
        pauses.insert(0, 0)  # the fusion uses the score at the speech end, as the listener hands the turn over

    from benchmarks.corpus.words import split_points, word_bounds
    from models.assets import model_path
    from models.embedded.silero import SileroVad
    from models.embedded.smart_turn import SmartTurn

    if not DATA.is_dir():
        print(f"error: {DATA} missing: install Debian's pocketsphinx-testdata", file=sys.stderr)
        return 2
    detector = SmartTurn(model_path("smart-turn-v3.2") / "model.onnx")
    vad = SileroVad(model_path("silero-vad") / "silero_vad.onnx")
    detector.probability(np.zeros(RATE, np.float32))  # the session's first run allocates its buffers
    read = words_reader() if args.words else None

    rows: list[dict[str, Any]] = []
    infer_ms: list[float] = []
    for rec in recordings():
        audio = rec.samples()
        words = word_bounds(audio)
        probs = speech_probabilities(vad, audio)
        turns = [("complete", audio.size, rec.transcript, " ".join(w for w, _, _ in words))]
        for cut_s in split_points(audio, words):
            said = " ".join(w for w, start, stop in words if (start + stop) / 2 < cut_s)
            turns.append(("prefix", int(cut_s * RATE), said + " |", said))
        for kind, before, text, heard in turns:
            end = speech_end(probs, vad.frame_samples, before)
            if end == 0:
                continue
            scores = {}
            for pause in pauses:
                turn = np.concatenate([audio[:end], np.zeros(pause * RATE // 1000, np.float32)])
                t0 = time.perf_counter()
                scores[str(pause)] = round(detector.probability(turn), 4)
                infer_ms.append((time.perf_counter() - t0) * 1000)
            row = {"recording": rec.name, "kind": kind, "speech_end_s": round(end / RATE, 3), "text": text,
                   "p": scores}
            if read is not None:
                row["words_p"] = round(read(heard), 5)
            rows.append(row)
            if args.verbose:
                print(f"{rec.name:15s} {kind:8s} {end / RATE:5.2f} s  "
                      + " ".join(f"+{k}ms {v:.3f}" for k, v in scores.items())
                      + (f"  words {row['words_p']:.4f}" if read is not None else "") + f"  {text}")

    n_complete = sum(r["kind"] == "complete" for r in rows)
    timing = percentiles(infer_ms, (50, 95, 100))
    report: dict[str, Any] = {
        "machine": machine(), "commit": git_commit(), "recordings": len(recordings()),
        "complete": n_complete, "prefixes": len(rows) - n_complete, "inference_ms": timing,
        "rates": {str(pause): rates(rows, pause) for pause in pauses}, "turns": rows,
    }
    if read is not None:
        report["decisions"] = {"audio": decisions(rows, False), "audio_and_words": decisions(rows, True)}
    print(f"{n_complete} complete sentences, {len(rows) - n_complete} mid-sentence prefixes; inference on the 8 s "
          f"window p50 {timing['p50']} p95 {timing['p95']} max {timing['p100']} ms ({timing['n']} calls)")
    for pause in pauses:
        print(f"pause {pause} ms   threshold  prefixes judged complete  complete judged incomplete")
        for r in report["rates"][str(pause)]:
            print(f"{'':13s}{r['threshold']:9.1f}  {r['prefix_judged_complete']:24.0%}  "
                  f"{r['complete_judged_incomplete']:26.0%}")
    for name, d in report.get("decisions", {}).items():
        cut = ", ".join(f"{p} ms {v:.0%}" for p, v in d["prefixes_cut_off"].items())
        need = d["complete_needed_ms"]
        print(f"{name}: prefixes cut off at a pause of {cut}; complete sentences need p50 {need['p50']} "
              f"p90 {need['p90']} max {need['p100']} ms of silence")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def words_reader() -> Any:
    """text → the LM's end-of-message probability, as a draft reads it (the default instructions, no history)."""
    import asyncio

    from models.assets import model_path
    from models.embedded.llama import LlamaLM
    from models.interfaces import GenerationOptions, Message
    from realtime.config import DEFAULT_INSTRUCTIONS

    lm = LlamaLM(model_path("qwen2.5-0.5b") / "model.gguf", "qwen2.5-0.5b", 1024, 2)
    options = GenerationOptions(max_tokens=1, temperature=0.0, score_turn_end=True)

    async def reading(text: str) -> float:
        async for delta in lm.stream([Message("system", DEFAULT_INSTRUCTIONS), Message("user", text)], options):
            if delta.finished is not None:
                return delta.finished
        raise RuntimeError(f"no reading for {text!r}")

    return lambda text: asyncio.run(reading(text))


if __name__ == "__main__":
    raise SystemExit(main())
