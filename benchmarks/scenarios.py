"""The scenario format the latency harness plays, and its validation.

    DIR/scenarios.json = {"scenarios": [{"name": str, "turns": [{
        "segments": [{"audio": "file.wav"} | {"pause_ms": int}, ...],
        "after_ms": int,
        "transcript": str        (optional)
    }]}]}

Segments of a turn are played back to back; a `pause_ms` is silence inside the turn (a hesitation). `after_ms`
is the silence that follows the turn while the reply plays. WAV files are mono 16-bit PCM at any rate (8 kHz
telephone audio included), resolved relative to DIR.

The user's speech end of a turn is where the *speech energy* of its last audio segment ends: trailing silence (or a
recording's room noise) in a WAV is trimmed energy-wise (`speech_bounds`), so padded recordings measure the same as
trimmed ones. The whole file is still played.
"""

from __future__ import annotations

import json
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.client import RATE, to_48k

FRAME_MS = 10
# A frame is speech when it is louder than this absolute floor and within RELATIVE_DB of the loudest frame, so a
# quiet telephone recording and a loud studio one are trimmed alike, and NOISE_DB above the recording's own noise
# floor (its 10th-percentile frame): in a real recording room noise and breath at -45..-50 dBFS trail the last
# word by 100-400 ms, and counting them as speech dated the user's speech end that much late (measured on
# pocketsphinx-testdata; synthesized speech has digital silence, so its bounds do not move). The noise rule never
# asks for more than NOISE_CAP_DB below the loudest frame, so a recording without pauses keeps its quiet words.
FLOOR_DBFS = -50.0
RELATIVE_DB = 35.0
NOISE_DB = 10.0
NOISE_CAP_DB = 20.0
DIGITAL_SILENCE_DB = -100.0


class ScenarioError(ValueError):
    """A scenario directory that cannot be played; the message names the file and the key."""


@dataclass(frozen=True)
class Segment:
    """Audio (float32 at 48 kHz, speech bounds in samples) or a pause."""

    samples: np.ndarray
    speech_start: int
    speech_end: int
    source: str  # the WAV path, or "pause"

    @property
    def is_pause(self) -> bool:
        return self.source == "pause"


@dataclass(frozen=True)
class Turn:
    segments: tuple[Segment, ...]
    after_ms: int
    transcript: str | None

    def render(self) -> RenderedTurn:
        """The turn as one 48 kHz buffer, with the sample offsets that matter for timing."""
        parts: list[np.ndarray] = []
        offset = 0
        speech_end = 0
        last_speech_start = 0
        pauses: list[tuple[int, int]] = []
        for seg in self.segments:
            if seg.is_pause:
                pauses.append((offset, offset + seg.samples.size))
            else:
                speech_end = offset + seg.speech_end
                last_speech_start = offset + seg.speech_start
            parts.append(seg.samples)
            offset += seg.samples.size
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return RenderedTurn(samples, speech_end, last_speech_start, tuple(pauses))


@dataclass(frozen=True)
class RenderedTurn:
    samples: np.ndarray  # float32, 48 kHz
    speech_end: int  # end of the last audio segment's speech
    last_speech_start: int  # start of the last audio segment's speech: replies before it answered a hesitation
    pauses: tuple[tuple[int, int], ...]  # (start, end) of each pause_ms segment

    @property
    def duration_s(self) -> float:
        return self.samples.size / RATE


@dataclass(frozen=True)
class Scenario:
    name: str
    turns: tuple[Turn, ...]


STANDARD_CORPUS = Path(__file__).resolve().parent / "corpus" / "audio"


def load_for_command(directory: Path, prog: str) -> list[Scenario] | None:
    """`load_scenarios` for a command line: None after printing why (and how to build the standard corpus)."""
    try:
        return load_scenarios(directory)
    except ScenarioError as exc:
        hint = " (generate it: python -m benchmarks.corpus)" if directory == STANDARD_CORPUS else ""
        print(f"{prog}: {exc}{hint}", file=sys.stderr)
        return None


def load_scenarios(directory: str | Path) -> list[Scenario]:
    """Read and validate DIR/scenarios.json and every WAV it names; raises ScenarioError."""
    root = Path(directory)
    index = root / "scenarios.json"
    if not index.is_file():
        raise ScenarioError(f"{index} does not exist (a scenario directory holds scenarios.json and its WAVs)")
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{index}: not valid JSON: {exc}") from None
    scenarios = _list(_object(raw, str(index)).get("scenarios"), f"{index}: 'scenarios'")
    if not scenarios:
        raise ScenarioError(f"{index}: 'scenarios' is empty")
    cache: dict[Path, tuple[np.ndarray, int, int]] = {}
    out = [_scenario(root, s, f"{index}: scenarios[{i}]", cache) for i, s in enumerate(scenarios)]
    names = [s.name for s in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScenarioError(f"{index}: duplicate scenario names: {', '.join(duplicates)}")
    return out


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A mono 16-bit PCM WAV as float32 and its rate; raises ScenarioError saying what is wrong."""
    if not path.is_file():
        raise ScenarioError(f"{path}: no such file")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise ScenarioError(f"{path}: not a PCM WAV file ({exc})") from None
    if channels != 1:
        raise ScenarioError(f"{path}: {channels} channels; scenarios need mono WAVs")
    if width != 2:
        raise ScenarioError(f"{path}: {8 * width}-bit samples; scenarios need 16-bit PCM")
    if rate < 8000:
        raise ScenarioError(f"{path}: sample rate {rate} Hz is below 8000 Hz")
    samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        raise ScenarioError(f"{path}: no audio")
    return samples, rate


def speech_bounds(samples: np.ndarray, rate: int) -> tuple[int, int] | None:
    """(first, one past last) sample of speech by frame energy, or None when the audio is silent."""
    frame = max(1, rate * FRAME_MS // 1000)
    n = samples.size // frame
    if n == 0:
        return None
    frames = samples[: n * frame].astype(np.float64).reshape(n, frame)
    levels = 10.0 * np.log10(np.maximum(np.mean(frames * frames, axis=1), 1e-12))
    peak = float(levels.max())
    recorded = levels[levels > DIGITAL_SILENCE_DB]  # padding of digital zeros is no room noise
    noise = min(float(np.percentile(recorded, 10)) + NOISE_DB, peak - NOISE_CAP_DB) if recorded.size else peak
    threshold = max(FLOOR_DBFS, peak - RELATIVE_DB, noise)
    loud = np.flatnonzero(levels > threshold)
    if loud.size == 0:
        return None
    return int(loud[0]) * frame, min(samples.size, (int(loud[-1]) + 1) * frame)


# --- validation helpers ------------------------------------------------------------------------------------------


def _scenario(root: Path, raw: Any, where: str, cache: dict[Path, tuple[np.ndarray, int, int]]) -> Scenario:
    obj = _object(raw, where)
    _known(obj, {"name", "turns"}, where)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: 'name' must be a non-empty string")
    turns = _list(obj.get("turns"), f"{where} ({name}): 'turns'")
    if not turns:
        raise ScenarioError(f"{where} ({name}): 'turns' is empty")
    return Scenario(name, tuple(_turn(root, t, f"{where} ({name}): turns[{j}]", cache) for j, t in enumerate(turns)))


def _turn(root: Path, raw: Any, where: str, cache: dict[Path, tuple[np.ndarray, int, int]]) -> Turn:
    obj = _object(raw, where)
    _known(obj, {"segments", "after_ms", "transcript"}, where)
    segments = _list(obj.get("segments"), f"{where}: 'segments'")
    after = obj.get("after_ms")
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ScenarioError(f"{where}: 'after_ms' must be an integer >= 0, got {after!r}")
    transcript = obj.get("transcript")
    if transcript is not None and not isinstance(transcript, str):
        raise ScenarioError(f"{where}: 'transcript' must be a string")
    parsed = tuple(_segment(root, s, f"{where}: segments[{k}]", cache) for k, s in enumerate(segments))
    if not any(not s.is_pause for s in parsed):
        raise ScenarioError(f"{where}: a turn needs at least one audio segment")
    return Turn(parsed, after, transcript)


def _segment(root: Path, raw: Any, where: str, cache: dict[Path, tuple[np.ndarray, int, int]]) -> Segment:
    obj = _object(raw, where)
    if set(obj) == {"pause_ms"}:
        ms = obj["pause_ms"]
        if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
            raise ScenarioError(f"{where}: 'pause_ms' must be an integer >= 0, got {ms!r}")
        n = RATE * ms // 1000
        return Segment(np.zeros(n, np.float32), 0, 0, "pause")
    if set(obj) == {"audio"}:
        ref = obj["audio"]
        if not isinstance(ref, str) or not ref:
            raise ScenarioError(f"{where}: 'audio' must be a WAV file name")
        path = (root / ref).resolve()
        if path not in cache:
            try:
                samples, rate = read_wav(path)
            except ScenarioError as exc:
                raise ScenarioError(f"{where}: {exc}") from None
            bounds = speech_bounds(samples, rate)
            if bounds is None:
                raise ScenarioError(f"{where}: {path} holds no speech (silent)")
            scale = RATE / rate
            cache[path] = (to_48k(samples, rate), int(bounds[0] * scale), int(bounds[1] * scale))
        audio, start, end = cache[path]
        return Segment(audio, start, end, str(path))
    raise ScenarioError(f"{where}: a segment is {{'audio': 'file.wav'}} or {{'pause_ms': int}}, got {obj!r}")


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} must be an object, got {type(raw).__name__}")
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{where} must be a list, got {type(raw).__name__}")
    return raw


def _known(obj: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(obj) - keys)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(keys))})")
