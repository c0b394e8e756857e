"""The ASR stage's bounded final pass: priority over partial passes, incremental decoding, loop retries.

Real whisper-base on human read speech (pocketsphinx-testdata); the agreement rules on synthetic audio.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from benchmarks.corpus.human import sentences
from benchmarks.wer import word_error_rate
from models.embedded.agreement import LocalAgreement, Word, attach_punctuation
from models.priority_executor import BACKGROUND, URGENT, PriorityExecutor

RATE = 16000


def test_urgent_calls_overtake_background_ones() -> None:
    pool = PriorityExecutor("test")
    gate = threading.Event()
    order: list[str] = []
    pool.submit_at(BACKGROUND, gate.wait)  # occupies the thread
    jobs = [pool.submit_at(BACKGROUND, order.append, f"partial-{i}") for i in range(3)]
    jobs.append(pool.submit_at(URGENT, order.append, "final-a"))
    jobs.append(pool.submit(order.append, "final-b"))  # plain submit (run_in_executor) is urgent
    gate.set()
    for job in jobs:
        job.result(5)
    assert order == ["final-a", "final-b", "partial-0", "partial-1", "partial-2"]
    blocked = threading.Event()
    pool.submit(blocked.wait)
    waiting = pool.submit_at(BACKGROUND, order.append, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    blocked.set()
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(order.append, "late")


def _word(text: str, start_s: float, end_s: float) -> Word:
    return Word(text, (), int(start_s * RATE), int(end_s * RATE))


def _speech(spans: list[tuple[float, float]], total_s: float) -> np.ndarray:
    """A tone where each (start, end) span is, near-silence between them."""
    audio = np.full(int(total_s * RATE), 1e-4, np.float32)
    for start, end in spans:
        t = np.arange(int(start * RATE), int(end * RATE))
        audio[t] = 0.3 * np.sin(2 * np.pi * 220 * t / RATE)
    return audio


def test_agreement_cuts_only_in_a_quiet_gap_both_passes_saw() -> None:
    punctuated = attach_punctuation([_word(" set", 0.0, 0.3), _word(",", 0.3, 0.32), _word(" a", 0.4, 0.5)])
    assert [w.text for w in punctuated] == [" set,", " a"]

    # Words joined without a gap: agreed, but no cut (a cut inside a sound garbles both halves).
    joined = _speech([(0.0, 2.0)], 2.6)
    la = LocalAgreement()
    hyp = [_word(" turn", 0.0, 0.5), _word(" the", 0.5, 0.8), _word(" lights", 0.8, 1.3), _word(" off", 1.3, 2.0)]
    assert not la.update(hyp[:3], joined, RATE // 2)
    assert not la.update(hyp, joined, RATE // 2)
    assert la.cut == 0 and la.committed == []

    # The same words with a real pause after "the": committed up to it, cut inside the pause.
    paused = _speech([(0.0, 0.8), (1.1, 2.0)], 2.6)
    hyp = [_word(" turn", 0.0, 0.5), _word(" the", 0.5, 0.8), _word(" lights", 1.1, 1.5), _word(" off", 1.5, 2.0)]
    la = LocalAgreement()
    la.update(hyp[:3], paused, RATE // 2)
    assert la.update(hyp, paused, RATE // 2)
    assert [w.text for w in la.committed] == [" turn", " the"]
    assert int(0.8 * RATE) <= la.cut <= int(1.1 * RATE)
    # A later pass that reads the prompt back ("the lights off") says "the" once.
    assert la.text([_word(" the", 0.9, 1.0), _word(" lights", 1.1, 1.5), _word(" off", 1.5, 2.0)]) == \
        "turn the lights off"


@pytest.fixture(scope="module")
def whisper():  # type: ignore[no-untyped-def]
    from models.assets import model_path
    from models.embedded.whisper import WhisperTokenizer

    return WhisperTokenizer(model_path("whisper-base"), 1000, 2, "en")


def test_final_pass_decodes_only_the_unagreed_tail_of_a_long_sentence(whisper) -> None:  # type: ignore[no-untyped-def]
    sentence = next(s for s in sentences() if s.name == "librivox-0870")  # 7.1 s, 22 words
    audio = sentence.samples()
    stream = whisper.open_stream()
    for end in range(RATE, audio.size, RATE):  # what the listener hands over while the caller speaks
        stream.push_segment(audio[:end])
    result = stream.finalize(audio)
    assert word_error_rate(sentence.transcript, result.text) <= 0.1, result.text
    # The whole turn is 7.1 s; the final pass read at most its last ~3.5 s.
    assert result.timing["turn_audio_ms"] == pytest.approx(7100, abs=10)
    assert result.timing["decoded_audio_ms"] <= 3500, result.timing
    # The same stream without incremental decoding reads it all, and says the same words.
    whole = whisper.open_stream()
    whisper.incremental = False
    try:
        plain = whole.finalize(audio)
    finally:
        whisper.incremental = True
    assert plain.timing["decoded_audio_ms"] == pytest.approx(7100, abs=10)
    assert word_error_rate(plain.text, result.text) <= 0.1


def test_a_looping_short_window_is_retried_without_the_30_s_window(whisper) -> None:  # type: ignore[no-untyped-def]
    from models.embedded.whisper import WhisperTokenizer, looped

    audio = next(s for s in sentences() if s.name == "librivox-0870").samples()[:RATE]  # "...Mr. John"
    short = WhisperTokenizer.__new__(WhisperTokenizer)
    short.__dict__.update(whisper.__dict__, window_frames=100)  # the same model, a 1 s shortest window
    decoded = short.decode(audio, [])
    assert decoded.retries >= 1, "whisper-base loops on this second of speech in a 1 s window"
    assert not looped(decoded.ids)
    assert "john" in short.text_of(decoded).lower()
    assert short.text_of(decoded).lower().count("john") == 1


def test_a_partial_pass_gives_way_to_a_final_pass(whisper) -> None:  # type: ignore[no-untyped-def]
    """abandon() stops a running partial pass before its decoder, the costly step (~9 ms a token)."""
    audio = next(s for s in sentences() if s.name == "librivox-0920").samples()  # 6 s
    decodes: list[int] = []
    generate = whisper._generate

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        decodes.append(1)
        return generate(*args, **kwargs)

    whisper._generate = counted
    try:
        assert whisper.open_stream().push_segment(audio)  # undisturbed: encoded, decoded, aligned
        assert len(decodes) == 1
        result: list[str] = []
        stream = whisper.open_stream()
        encoding = threading.Event()
        encode = whisper._encode

        def slow_encode(*args, **kwargs):  # type: ignore[no-untyped-def]
            encoding.set()
            time.sleep(0.05)  # the abandon below lands while the encoder runs, whatever the machine's speed
            return encode(*args, **kwargs)

        whisper._encode = slow_encode
        worker = threading.Thread(target=lambda: result.append(stream.push_segment(audio)))
        worker.start()
        assert encoding.wait(10)
        stream.abandon()  # what the listener does when a final pass is asked for
        worker.join(10)
    finally:
        for patched in ("_generate", "_encode"):
            whisper.__dict__.pop(patched, None)
    assert result == [""]  # nothing shown from an abandoned pass
    assert len(decodes) == 1, "the abandoned pass never reached the decoder"
    assert stream.push_segment(audio), "the stream works again after an abandoned pass"


def test_an_urgent_call_preempts_the_background_call_running() -> None:
    """Another session's final pass must not wait out this session's partial pass: the running one is told."""
    pool = PriorityExecutor("test")
    stop = threading.Event()
    started = threading.Event()

    def partial() -> str:
        started.set()
        return "stopped early" if stop.wait(5) else "ran to the end"

    running = pool.submit_at(BACKGROUND, partial, preempt=stop.set)
    assert started.wait(5)
    pool.submit_at(BACKGROUND, str)  # as urgent as the running one: no preemption
    assert not stop.is_set()
    final = pool.submit_at(URGENT, lambda: "final")
    assert running.result(5) == "stopped early"
    assert final.result(5) == "final"
    pool.shutdown()


def test_a_dropped_final_pass_stops_before_its_decoder_and_the_listener_starts_afresh(whisper) -> None:  # type: ignore[no-untyped-def]
    """A discarded draft's final pass (the caller went on) stops at its next step instead of running to its end,
    which is what a cancellation used to wait for; the next pass over that span is a fresh one."""
    import asyncio

    from models.interfaces import PassStopped
    from realtime.listener import Listener

    audio = next(s for s in sentences() if s.name == "librivox-0920").samples()  # 6 s
    decodes: list[int] = []
    generate, encode = whisper._generate, whisper._encode
    encoding = threading.Event()

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        decodes.append(1)
        return generate(*args, **kwargs)

    def slow_encode(*args, **kwargs):  # type: ignore[no-untyped-def]
        encoding.set()
        time.sleep(0.05)  # the drop below lands while the encoder runs
        return encode(*args, **kwargs)

    class Vad:
        frame_samples = 512

        def open_stream(self):  # type: ignore[no-untyped-def]
            return self

        def probability(self, frame: np.ndarray) -> float:
            return 0.0

        def reset(self) -> None: ...

    async def scenario() -> None:
        from concurrent.futures import ThreadPoolExecutor

        executor, vad_thread = PriorityExecutor("asr-test"), ThreadPoolExecutor(1)
        listener = Listener(Vad(), whisper, vad_thread, executor, lambda e: None, 0.5, 64, 28000)
        try:
            listener.push(audio, 0.0)
            listener.open_turn(0)
            dropped = listener.final_pass(audio.size)
            assert await asyncio.to_thread(encoding.wait, 10)
            t0 = time.perf_counter()
            listener.drop_pass(audio.size)
            with pytest.raises(PassStopped):
                await dropped
            assert time.perf_counter() - t0 < 0.5
            assert not decodes, "the dropped pass never reached the decoder"
            fresh = await listener.final_pass(audio.size)
            assert fresh.text and decodes
            # A pass still waiting behind another caller's leaves the queue at once.
            busy = executor.submit_at(URGENT, time.sleep, 0.5)
            queued = listener.final_pass(audio.size - RATE)
            t0 = time.perf_counter()
            listener.drop_pass(audio.size - RATE)
            await asyncio.wait({queued})
            assert queued.cancelled() and time.perf_counter() - t0 < 0.2 and not busy.done()
        finally:
            await listener.close()
            executor.shutdown()
            vad_thread.shutdown()

    whisper._generate, whisper._encode = counted, slow_encode
    try:
        asyncio.run(scenario())
    finally:
        for patched in ("_generate", "_encode"):
            whisper.__dict__.pop(patched, None)
