"""The ASR stage alone, offline: what the final pass costs and what it gets right, turn by turn.

`python -m benchmarks.asr_replay [--scenarios DIR ...] [--modes incremental,whole] [--asr whisper-base]`

Plays each turn of the scenario directories (default: the human sentences of benchmarks/corpus/human and the
standard corpus) through the embedded Whisper stream as the server does: a partial pass each time another
`--segment-ms` of the turn has arrived, then the final pass over the turn up to its speech end (plus the 32 ms of
Silero's last window). No clock, no network: the figures are the stage's own cost on this machine. Reports, per
mode, the final pass's work p50/p95/max, the audio it decoded, the partial passes' cost, loop retries and the
word error rate against each turn's transcript. `whole` is the stream before incremental decoding (every pass
re-reads the turn).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scenarios import RATE as SCENARIO_RATE
from benchmarks.scenarios import ScenarioError, load_scenarios
from benchmarks.summary import percentiles
from benchmarks.wer import word_error_rate
from realtime.audio import Resampler

ASR_RATE = 16000
DEFAULT_DIRS = ("benchmarks/corpus/human", "benchmarks/corpus/audio")


def turns(directories: list[str]) -> list[tuple[str, np.ndarray, int, str]]:
    """(name, 16 kHz turn audio, speech-end sample, transcript) of every turn with a transcript."""
    out = []
    for d in directories:
        for scenario in load_scenarios(d):
            for i, turn in enumerate(scenario.turns):
                if not turn.transcript:
                    continue
                r = turn.render()
                resampler = Resampler(SCENARIO_RATE, ASR_RATE)
                audio = np.concatenate([resampler.process(r.samples),
                                        resampler.process(np.zeros(SCENARIO_RATE // 10, np.float32))])
                out.append((f"{Path(d).name}/{scenario.name}/{i}", audio,
                            r.speech_end * ASR_RATE // SCENARIO_RATE, turn.transcript))
    return out


def replay(tokenizer: Any, audio: np.ndarray, end: int, segment: int) -> dict[str, Any]:
    stream = tokenizer.open_stream()
    stream.reset()
    partial_ms = []
    for at in range(segment, end, segment):
        t0 = time.perf_counter()
        stream.push_segment(audio[:at])
        partial_ms.append((time.perf_counter() - t0) * 1000)
    stop = min(audio.size, end + 512)  # Silero's last speech window ends up to 32 ms after the energy end
    t0 = time.perf_counter()
    result = stream.finalize(audio[:stop])
    final_ms = (time.perf_counter() - t0) * 1000
    return {"text": result.text, "final_ms": round(final_ms, 1), "partial_ms": [round(x, 1) for x in partial_ms],
            "decoded_audio_ms": result.timing.get("decoded_audio_ms"), "turn_audio_ms": round(stop / 16, 1),
            "loop_retries": result.timing.get("loop_retries", 0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.asr_replay", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", action="append", help="scenario directory (repeatable)")
    p.add_argument("--modes", default="incremental,whole")
    p.add_argument("--asr", default="whisper-base")
    p.add_argument("--segment-ms", type=int, default=1000)
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/asr-replay.json"))
    args = p.parse_args(argv)

    from models.assets import model_path
    from models.embedded.whisper import WhisperTokenizer

    try:
        corpus = turns(args.scenarios or list(DEFAULT_DIRS))
    except ScenarioError as exc:
        print(f"error: {exc} (python -m benchmarks.corpus; python -m benchmarks.corpus.human)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"asr": args.asr, "segment_ms": args.segment_ms, "modes": {}}
    for mode in args.modes.split(","):
        tok = WhisperTokenizer(model_path(args.asr), args.segment_ms, args.threads, "en", args.window_s,
                               incremental=mode == "incremental")
        replay(tok, corpus[0][1], corpus[0][2], args.segment_ms * 16)  # warm-up
        rows = []
        for name, audio, end, ref in corpus:
            row = replay(tok, audio, end, args.segment_ms * 16)
            row.update(name=name, reference=ref, wer=round(word_error_rate(ref, row["text"]), 3))
            rows.append(row)
        ref_words = sum(len(r["reference"].split()) for r in rows)
        errors = sum(r["wer"] * len(r["reference"].split()) for r in rows)
        human = [r for r in rows if r["name"].startswith("human/")]
        summary = {
            "turns": len(rows),
            "wer": round(errors / ref_words, 4),
            "wer_human": round(sum(r["wer"] * len(r["reference"].split()) for r in human)
                               / max(1, sum(len(r["reference"].split()) for r in human)), 4),
            "final_ms": percentiles((r["final_ms"] for r in rows), (50, 95, 100)),
            "final_ms_human": percentiles((r["final_ms"] for r in human), (50, 95, 100)),
            "decoded_audio_ms": percentiles((r["decoded_audio_ms"] for r in rows), (50, 95, 100)),
            "partial_ms": percentiles((x for r in rows for x in r["partial_ms"]), (50, 95, 100)),
            "loop_retries": sum(r["loop_retries"] for r in rows),
        }
        report["modes"][mode] = {"summary": summary, "turns": rows}
        f, d, pp = summary["final_ms"], summary["decoded_audio_ms"], summary["partial_ms"]
        print(f"{mode:12s} turns {len(rows)}  WER {summary['wer']:.3f} (human {summary['wer_human']:.3f})  "
              f"final p50 {f['p50']} p95 {f['p95']} max {f['p100']} ms  decoded p50 {d['p50']} max {d['p100']} ms  "
              f"partial p50 {pp['p50']} p95 {pp['p95']} ms  loop retries {summary['loop_retries']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
