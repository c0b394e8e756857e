"""The embedded stack's alternatives load from the assembled packages and do their job."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from models.assets import ASSETS, model_path, sha256_file
from models.interfaces import GenerationOptions, Message, VoiceSettings

pytestmark = pytest.mark.models


def test_assembled_files_match_their_pins() -> None:
    for asset in ASSETS.values():
        folder = model_path(asset.key)
        for piece in asset.pieces:
            if piece.sha256 and piece.name.endswith(".onnx"):  # the big ones are checked when assembled
                assert sha256_file(folder / piece.name) == piece.sha256


def test_smollm2_answers_through_the_same_lm_adapter() -> None:
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("smollm2-135m") / "model.gguf", "smollm2-135m", 1024, 2)
    assert not lm.supports_tools  # its template has no tool section: tools are simply not offered

    async def reply() -> str:
        out = ""
        messages = [Message("system", "Answer briefly."), Message("user", "Say hello.")]
        async for d in lm.stream(messages, GenerationOptions(max_tokens=20, temperature=0.0)):
            out += d.text
        return out

    assert asyncio.run(reply()).strip()


def test_whisper_tiny_en_transcribes() -> None:
    from models.embedded.whisper import WhisperTokenizer
    from tests.conftest import speak
    from tests.test_audio_path import to16k

    audio, rate = speak("Good morning, how are you today?")
    tok = WhisperTokenizer(model_path("whisper-tiny.en"), 1000, 2, "en")
    result = tok.open_stream().finalize(to16k(audio, rate))
    assert result.key == "good morning how are you today"


def test_hibari_reports_what_it_cannot_do() -> None:
    from models.embedded.hibari_tts import HibariTTS

    tts = HibariTTS(1)
    assert tts.unsupported(VoiceSettings(voice="heart", speed=1.3)) == []
    assert set(tts.unsupported(VoiceSettings(voice="fenrir", emotion="happy"))) == {"voice", "emotion"}
    slow = np.concatenate(list(tts.stream("One two three.", VoiceSettings(speed=0.7))))
    fast = np.concatenate(list(tts.stream("One two three.", VoiceSettings(speed=1.5))))
    assert slow.size > fast.size * 1.5, "speed is applied"
    # Sentences start speaking at once and end with a short pause, not hibari's 0.2-0.5 s pads.
    frame = tts.sample_rate // 100
    levels = [float(np.sqrt(np.mean(fast[i : i + frame] ** 2))) for i in range(0, fast.size - frame, frame)]
    voiced = [i for i, lv in enumerate(levels) if lv > 10 ** (-45 / 20)]
    assert voiced[0] <= 3 and len(levels) - voiced[-1] <= 17


def test_two_calls_taking_turns_keep_their_conversations_cached() -> None:
    """Two sessions share one llama.cpp context. Each turn of one used to evict the other's history, so every turn
    prefilled its whole conversation again (seconds on two cores); now each finds its own history cached, and
    answers exactly as it would from a cold cache."""
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("qwen2.5-0.5b") / "model.gguf", "qwen2.5-0.5b", 1024, 2)
    options = GenerationOptions(max_tokens=12, temperature=0.0)

    async def reply(messages: list[Message]) -> str:
        return "".join([d.text async for d in lm.stream(messages, options)])

    def opening(topic: str) -> list[Message]:
        return [Message("system", "You are a voice assistant. Answer in one short sentence."),
                Message("user", f"I would like to talk about {topic}. Tell me something surprising about it."),
                Message("assistant", f"Here is something surprising about {topic}: " + "it is older than it looks "
                        "and it has changed a great deal over the centuries, in ways few people notice. " * 2)]

    calls = {"sea": opening("the sea"), "alps": opening("the Alps")}
    last: dict[str, tuple[list[Message], str]] = {}
    for turn in range(2):
        for name, history in calls.items():
            history.append(Message("user", f"And what else, part {turn}?"))
            text = asyncio.run(reply(history))
            if turn:  # the other call ran in between; this one's previous prompt was still cached
                previous = len(lm.prompt_tokens(last[name][0], options))
                assert lm.prompt_cache.last_reused >= previous, (name, lm.prompt_cache.last_reused, previous)
            last[name] = (list(history), text)
            history.append(Message("assistant", text))
    assert lm.prompt_cache.restored >= 2
    for name, (messages, text) in last.items():
        lm.llm.reset()  # a cold cache: the same answer, token for token
        assert asyncio.run(reply(messages)) == text, name


def test_more_calls_than_parked_caches_still_answer_as_from_a_cold_cache() -> None:
    """Past its entry limit the prompt cache drops the least recently used conversation; every call still gets
    the answer it would get from a cold cache (a dropped one is prefilled again, not mixed up with another)."""
    from models.embedded.llama import LlamaLM
    from models.embedded.prompt_cache import PromptCache

    lm = LlamaLM(model_path("smollm2-135m") / "model.gguf", "smollm2-135m", 2048, 2)
    lm.prompt_cache = PromptCache(lm.llm, max_entries=2)
    options = GenerationOptions(max_tokens=6, temperature=0.0)

    async def reply(messages: list[Message]) -> str:
        return "".join([d.text async for d in lm.stream(messages, options)])

    calls = [[Message("system", "Answer briefly."),
              Message("user", f"Caller {i} here. " + f"My favourite number is {i}. " * 12 + "What is it?")]
             for i in range(3)]
    answers = []
    for _ in range(2):
        for messages in calls:
            answers.append((list(messages), asyncio.run(reply(messages))))
            messages += [Message("assistant", answers[-1][1]), Message("user", "And again?")]
    assert lm.prompt_cache.parked > 2
    for messages, text in answers:
        lm.llm.reset()
        assert asyncio.run(reply(messages)) == text


def test_a_stream_closed_during_a_long_prefill_stops_within_a_chunk() -> None:
    """A discarded draft or an interrupted reply whose prompt is still being read (seconds when the cache lost a
    long history) stops within one prefill chunk, not when the whole prompt has been read."""
    import time

    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("qwen2.5-0.5b") / "model.gguf", "qwen2.5-0.5b", 2048, 2)
    story = "The lighthouse keeper wrote down every ship that passed, its flag, its cargo and the weather. " * 40
    messages = [Message("system", "You are a voice assistant."), Message("user", story + " Summarize this.")]
    options = GenerationOptions(max_tokens=4, temperature=0.0)
    prompt = len(lm.prompt_tokens(messages, options))
    assert prompt > 800

    async def cancelled_after(seconds: float) -> float:
        async def consume() -> None:
            async for _ in lm.stream(messages, options):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(seconds)
        t0 = time.perf_counter()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return time.perf_counter() - t0

    lm.llm.reset()
    stop_s = asyncio.run(cancelled_after(0.5))
    assert lm.llm.n_tokens < prompt - 1, "the prompt was read to its end after the stream was closed"
    assert stop_s < 1.0, f"the stream took {stop_s:.2f} s to stop"
    # What was read stays cached: the next request for this prompt goes on from there and answers normally.
    text = asyncio.run(_reply(lm, messages, options))
    assert text.strip()


async def _reply(lm: object, messages: list[Message], options: GenerationOptions) -> str:
    return "".join([d.text async for d in lm.stream(messages, options)])  # type: ignore[attr-defined]


def test_a_stream_left_open_at_a_tool_call_never_aborts_the_next_one() -> None:
    """A reply that stops for a tool call keeps its stream open while the tool runs and closes it just before the
    continuation starts. Closing it must stop its own generation, not abort the continuation's (it once did, now
    and then: the spoken tool result was empty)."""
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("smollm2-135m") / "model.gguf", "smollm2-135m", 1024, 2)
    messages = [Message("system", "Answer briefly."), Message("user", "Count from one to twenty.")]
    options = GenerationOptions(max_tokens=24, temperature=0.0)

    async def continuation_after_an_open_stream() -> str:
        first = lm.stream(messages, options)
        await anext(first)  # the "tool call": the consumer stops reading here and leaves the stream open
        await first.aclose()  # type: ignore[attr-defined]
        return await _reply(lm, messages, options)

    for _ in range(5):
        assert asyncio.run(continuation_after_an_open_stream()).strip()


def test_the_lm_reads_whether_the_callers_words_are_finished_before_it_answers() -> None:
    """Semantic turn detection's transcript score (models/embedded/message_end.py): a whole sentence reads
    finished, the same sentence cut mid-way does not, whatever punctuation the transcript closed it with; and the
    reading is the draft's own prefill, so the answer that follows is the one it would give without it."""
    from models.embedded.llama import LlamaLM

    lm = LlamaLM(model_path("qwen2.5-0.5b") / "model.gguf", "qwen2.5-0.5b", 1024, 2)
    system = Message("system", "You are a voice assistant on a phone call. Answer in one short sentence.")
    plain = GenerationOptions(max_tokens=10, temperature=0.0)
    scored = GenerationOptions(max_tokens=10, temperature=0.0, score_turn_end=True)

    async def run(text: str, options: GenerationOptions) -> tuple[list[float], str]:
        deltas = [d async for d in lm.stream([system, Message("user", text)], options)]
        return [d.finished for d in deltas if d.finished is not None], "".join(d.text for d in deltas)

    whole, answer = asyncio.run(run("He was not an ill-disposed young man.", scored))
    cut, _ = asyncio.run(run("He was not an ill-disposed.", scored))
    # Every llama.cpp decode of the next stream, by batch size.
    decoded: list[int] = []
    ctx_decode = lm.llm._ctx.decode

    def counting(batch: Any) -> None:
        decoded.append(batch.batch.n_tokens)
        ctx_decode(batch)

    lm.llm._ctx.decode = counting  # type: ignore[method-assign]
    question, _ = asyncio.run(run("What is the capital of France?", scored))
    lm.llm._ctx.decode = ctx_decode  # type: ignore[method-assign]
    assert len(whole) == 1 and len(cut) == 1 and len(question) == 1, "one reading, before the answer"
    assert whole[0] > 0.1 and question[0] > 0.1, (whole, question)
    assert cut[0] < 0.02, cut
    # The reading shares the prompt's decode: everything the cache lacked (the words, "?", the end of message and
    # the assistant's header) in one batch, then one token at a time for the answer.
    full = len(lm.prompt_tokens([system, Message("user", "What is the capital of France?")], plain))
    assert decoded[0] == full - lm.prompt_cache.last_reused and decoded[0] >= 6, (decoded, full)
    assert all(n == 1 for n in decoded[1:]), decoded
    lm.llm.reset()
    none, same = asyncio.run(run("He was not an ill-disposed young man.", plain))
    assert none == [] and same == answer
