"""Smart Turn v3.2 on real human speech: a finished sentence sounds finished, the same one cut mid-sentence does not.

Recordings: Debian's pocketsphinx-testdata (benchmarks/corpus/human.py). The cut times are word boundaries (the
quietest 10 ms between two words, from whisper-base word timestamps) chosen where the verdict holds whichever way
the cut moves by up to 60 ms and with 0-200 ms of pause after it (`python -m benchmarks.turn_replay` scores every
boundary of every recording). Speech ends are where Silero (threshold 0.5) last hears speech, as the listener
dates them.
"""

from __future__ import annotations

import statistics
import time
from functools import lru_cache

import numpy as np
import pytest

from benchmarks.corpus.human import DATA, sentences
from models.assets import model_path
from models.embedded.smart_turn import SAMPLE_RATE, WINDOW_SAMPLES, SmartTurn

pytestmark = [
    pytest.mark.models,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} missing: install Debian's pocketsphinx-testdata"),
]

# name: (speech end s, the sentence)
COMPLETE = {
    "librivox-0870": (6.88, "And Mister John Dashwood had then leisure to consider how much there might be prudently "
                            "in his power to do for them."),
    "librivox-0920": (5.86, "Had he married a more amiable woman he might have been made still more respectable than "
                            "he was."),
    "cards-005": (3.30, "Eight of spades, four of clubs, seven of hearts."),
    "goforward": (2.24, "Go forward ten meters."),
}
# name: (cut s, what the caller has said so far)
CUT = {
    "librivox-0870": (4.18, "And Mister John Dashwood had then leisure to consider how much |"),
    "librivox-0920": (2.29, "Had he married a more amiable woman |"),
    "librivox-0890": (3.88, "Unless to be rather cold-hearted and rather selfish is |"),
}
PAUSES_S = (0.0, 0.2)  # the turn exactly to the speech end, and with the 200 ms a VAD's stop adds (as Pipecat feeds it)


@lru_cache(maxsize=1)
def detector() -> SmartTurn:
    return SmartTurn(model_path("smart-turn-v3.2") / "model.onnx")


@lru_cache(maxsize=1)
def recordings() -> dict[str, np.ndarray]:
    return {s.name: s.samples() for s in sentences()}


def turn(name: str, end_s: float, pause_s: float = 0.0) -> np.ndarray:
    audio = recordings()[name][: int(end_s * SAMPLE_RATE)]
    return np.concatenate([audio, np.zeros(int(pause_s * SAMPLE_RATE), np.float32)])


def test_features_match_transformers_whisper_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.WhisperFeatureExtractor(chunk_length=8)
    speech = recordings()["librivox-0870"]
    # shorter than the window (zero-padded at the start), and longer (its last 8 s)
    for audio in (speech[: 3 * SAMPLE_RATE], np.concatenate([speech, speech])):
        window = audio[-WINDOW_SAMPLES:]
        window = np.concatenate([np.zeros(WINDOW_SAMPLES - window.size, np.float32), window])
        expected = reference(window, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                             max_length=WINDOW_SAMPLES, truncation=True, do_normalize=True).input_features[0]
        ours = detector().features(audio)
        assert ours.shape == expected.shape == (80, 800)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("name", sorted(COMPLETE))
def test_a_finished_sentence_sounds_finished(name: str) -> None:
    end_s, _ = COMPLETE[name]
    # To the speech end, with a pause after it, and as recorded (its own 0.2-1 s of room tone after the last word).
    for audio in (*(turn(name, end_s, p) for p in PAUSES_S), recordings()[name]):
        assert detector().probability(audio) > 0.8


@pytest.mark.parametrize("name", sorted(CUT))
def test_the_same_speech_cut_mid_sentence_is_waited_for(name: str) -> None:
    cut_s, _ = CUT[name]
    for pause_s in PAUSES_S:
        assert detector().probability(turn(name, cut_s, pause_s)) < 0.3
    if name in COMPLETE:  # the whole sentence from the same speaker scores far higher than its first part
        whole = detector().probability(turn(name, COMPLETE[name][0]))
        assert whole - detector().probability(turn(name, cut_s)) > 0.5


def test_edges_of_the_input() -> None:
    st = detector()
    assert st.probability(np.zeros(0, np.float32)) == 0.0
    assert 0.0 <= st.probability(np.zeros(SAMPLE_RATE, np.float32)) <= 1.0  # silence: a number, not a NaN
    speech = recordings()["goforward"]
    # float64 input is the same turn; more than 8 s: only the last 8 s count
    assert st.probability(speech.astype(np.float64)) == pytest.approx(st.probability(speech), abs=1e-6)
    long = np.concatenate([recordings()["librivox-0870"], speech])
    assert st.probability(long) == pytest.approx(st.probability(long[-WINDOW_SAMPLES:]), abs=1e-6)
    with pytest.raises(ValueError):
        st.probability(np.zeros((2, SAMPLE_RATE), np.float32))


def test_one_inference_on_8_s_is_quick() -> None:
    st = detector()
    audio = np.concatenate([recordings()["librivox-0870"], recordings()["librivox-0920"]])[-WINDOW_SAMPLES:]
    st.probability(audio)  # the first run of a session allocates its buffers
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        st.probability(audio)
        times.append(time.perf_counter() - t0)
    assert statistics.median(times) < 0.5
