"""The Step-Audio stack on tiny random weights, on the CPU: load -> tokenize -> generate -> decode.

The synthetic folders have the release's layout, file formats and tensor names (models/step_audio/synthetic.py),
so this runs the real loading code, the streaming tokenizer, the Step1 decode loop through
`AutoModelForCausalLM(trust_remote_code=True)`, TTS-3B's prompt layout and the chunked flow + HiFT decoder.
What it cannot show is that the real weights produce speech: see docs/STEP_AUDIO.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.assets import MissingModelError, model_path
from models.interfaces import GenerationOptions, Message, ModelStack, VoiceSettings
from models.step_audio import audio_tokens as fmt
from models.step_audio import load, synthetic
from models.step_audio.decoder import ChunkPlan, StreamingDecode
from models.step_audio.paths import StepAudioFilesError
from models.step_audio.speakers import clean_sample
from models.step_audio.tokenizer import StepAudioStream
from realtime.config import Config, ModelsConfig, StepAudioStackConfig

RATE = 16000


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticFolders:
    return synthetic.build(tmp_path_factory.mktemp("step-audio"))


def config_for(folders: synthetic.SyntheticFolders, **changes: Any) -> Config:
    sa = StepAudioStackConfig(tokenizer_dir=str(folders.tokenizer_dir), chat_dir=str(folders.chat_dir),
                              tts_dir=str(folders.tts_dir), device="cpu", dtype="float32", transcript="chat",
                              tts_max_tokens=60)
    sa = dataclasses.replace(sa, **changes)
    return Config(models=ModelsConfig(stack="step-audio", step_audio=sa))


@pytest.fixture(scope="module")
def stack(folders: synthetic.SyntheticFolders) -> ModelStack:
    try:
        model_path("silero-vad")
    except MissingModelError as exc:
        pytest.skip(str(exc))
    return load(config_for(folders))


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    return synthetic.voice_like(seconds, np.random.default_rng(seed))


class ForwardCounter:
    """Counts forward passes of a model (to see that a closed stream stopped computing)."""

    def __init__(self, model: Any) -> None:
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


# --- loading ----------------------------------------------------------------------------------------------------


def test_stack_loads_from_release_layout(stack: ModelStack) -> None:
    assert stack.name == "step-audio"
    assert stack.tokenizer.segment_ms == 240
    assert stack.tts.sample_rate == 22050
    assert "Step-Audio-Chat" in stack.info["lm"]
    assert "CosyVoice-300M-25Hz-Music" in stack.info["tts"]


def test_missing_folders_and_files_are_named(folders: synthetic.SyntheticFolders, tmp_path: Path) -> None:
    with pytest.raises(StepAudioFilesError, match=r"\[models.step_audio\].tokenizer_dir is empty"):
        load(config_for(folders, tokenizer_dir=""))
    with pytest.raises(StepAudioFilesError, match="no such folder"):
        load(config_for(folders, chat_dir=str(tmp_path / "nope")))
    broken = tmp_path / "tok"
    broken.mkdir()
    (broken / "linguistic_tokenizer.npy").write_bytes(b"")
    with pytest.raises(StepAudioFilesError, match="no Paraformer folder"):
        load(config_for(folders, tokenizer_dir=str(broken)))
    with pytest.raises(StepAudioFilesError, match="prompt speaker 'Nobody'"):
        load(config_for(folders, speaker="Nobody"))


def test_builtin_step1_matches_the_folder_code(folders: synthetic.SyntheticFolders) -> None:
    from models.step_audio.generation import load_step1

    remote = load_step1(folders.chat_dir, torch.float32, "cpu", "folder")
    ours = load_step1(folders.chat_dir, torch.float32, "cpu", "builtin")
    ids = torch.tensor([[1, 4, 109, 122, 15, 65536, 66600, 3]])
    torch.testing.assert_close(remote(input_ids=ids).logits, ours(input_ids=ids).logits)


# --- tokenizer: streaming equals one pass on whole groups -------------------------------------------------------


def push_all(stream: Any, audio: np.ndarray, step: int = 3840) -> list[int]:
    """Push segments as the listener does; return the groups count after each push."""
    counts = []
    for end in range(step, audio.size + 1, step):
        stream.push_segment(audio[:end])
        counts.append(stream.groups)
    return counts


def test_streaming_tokenization_equals_one_pass(stack: ModelStack) -> None:
    audio = speech(3.0)
    stream = stack.tokenizer.open_stream()
    assert isinstance(stream, StepAudioStream)
    counts = push_all(stream, audio)
    streamed = stream.codes()
    final = stream.finalize(audio)
    offline = stack.tokenizer.open_stream().finalize(audio)
    assert final.key == offline.key and final.content == offline.content
    codes = fmt.parse_audio_text(final.content)
    assert len(codes) % fmt.GROUP_TOKENS == 0
    assert len(codes) // 5 == int(3.0 * 1000 / fmt.GROUP_MS)  # 25 groups in 3 s
    assert final.audio_tokens == len(codes)
    # Groups appeared while the audio arrived, never shrank, and are a prefix of the final codes.
    assert counts[-1] > 0 and counts == sorted(counts)
    assert codes[: len(streamed)] == streamed
    fmt.deinterleave(codes)  # the 2:3 pattern holds


def test_finalize_does_not_disturb_a_turn_that_goes_on(stack: ModelStack) -> None:
    audio = speech(3.0, seed=1)
    stream = stack.tokenizer.open_stream()
    push_all(stream, audio[: 2 * RATE])
    draft = stream.finalize(audio[: int(1.7 * RATE)])  # the VAD's speech end lies before the last segment
    assert draft.key == stack.tokenizer.open_stream().finalize(audio[: int(1.7 * RATE)]).key
    push_all(stream, audio)  # the user resumes; the stream continues where it was
    assert stream.finalize(audio).key == stack.tokenizer.open_stream().finalize(audio).key


def test_too_short_a_turn_has_no_input(stack: ModelStack) -> None:
    empty = stack.tokenizer.open_stream().finalize(np.zeros(800, np.float32))
    assert empty.key == "" and empty.content == "" and empty.text == ""


# --- chat -------------------------------------------------------------------------------------------------------


async def test_chat_reads_audio_tokens_and_streams_text(stack: ModelStack) -> None:
    user = stack.tokenizer.open_stream().finalize(speech(1.5))
    lm: Any = stack.lm
    messages = [Message("system", "适配用户的语言，用口语化的文字回答"), Message("user", user.content)]
    prompt = lm.prompt_ids(messages)
    assert prompt[0] == 1 and prompt.count(1) == 1
    audio_ids = [i for i in prompt if i >= fmt.AUDIO_ID_BASE]
    assert fmt.codes_from_ids(audio_ids) == fmt.parse_audio_text(user.content)  # one id per `<audio_N>` tag
    tail = lm.tokenizer.encode("<|BOT|>assistant\n", add_special_tokens=False)
    assert prompt[-len(tail):] == tail
    deltas = [d async for d in stack.lm.stream(messages, GenerationOptions(max_tokens=12, temperature=0.0))]
    assert len(deltas) >= 2 and "".join(d.text for d in deltas).strip()
    assert stack.lm.count_tokens("hello") == 5  # byte-level synthetic tokenizer


async def test_closing_a_chat_stream_stops_the_model(stack: ModelStack) -> None:
    lm: Any = stack.lm
    counter = ForwardCounter(lm.model)
    try:
        stream = stack.lm.stream([Message("user", "hi")], GenerationOptions(max_tokens=2000, temperature=0.7))
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        t0 = time.perf_counter()
        await stream.aclose()  # type: ignore[attr-defined]
        closed_ms = (time.perf_counter() - t0) * 1000
        after_close = counter.calls
        await asyncio.sleep(0.3)
        assert counter.calls == after_close, "the decode loop kept running after the stream was closed"
        assert after_close < 20
        assert closed_ms < 2000
        # The lock is free again: a second stream runs at once.
        deltas = [d async for d in stack.lm.stream([Message("user", "hi")], GenerationOptions(max_tokens=3))]
        assert deltas
    finally:
        counter.remove()


async def test_cancelling_the_task_of_a_stream_stops_the_model(stack: ModelStack) -> None:
    lm: Any = stack.lm
    counter = ForwardCounter(lm.model)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in stack.lm.stream([Message("user", "go")], GenerationOptions(max_tokens=2000)):
            started.set()

    try:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        frozen = counter.calls
        await asyncio.sleep(0.3)
        assert counter.calls == frozen
    finally:
        counter.remove()


def test_transcript_comes_from_the_chat_model(stack: ModelStack) -> None:
    user = stack.tokenizer.open_stream().finalize(speech(1.2, seed=4))
    assert user.text.strip()  # the synthetic model's gibberish, but produced by Step-Audio-Chat itself
    assert not fmt.is_audio_text(user.text)


# --- TTS + decoder ------------------------------------------------------------------------------------------------


def test_tts_streams_chunks_on_whole_groups(stack: ModelStack) -> None:
    t0 = time.perf_counter()
    times, chunks = [], []
    for chunk in stack.tts.stream("hello there", VoiceSettings()):
        times.append(time.perf_counter() - t0)
        chunks.append(chunk)
    assert len(chunks) >= 2  # audio left before the model finished writing
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    seconds = sum(c.size for c in chunks) / 22050
    assert seconds == pytest.approx(60 / fmt.TOKENS_PER_SECOND, rel=0.05)  # 60 tokens = 12 groups = 1.44 s
    first_groups = 4 - 1  # the first chunk, less the overlap group it holds back for the cross-fade
    assert chunks[0].size / 22050 == pytest.approx(first_groups * 0.12, rel=0.05)


def test_closing_tts_stops_the_model(stack: ModelStack) -> None:
    tts: Any = stack.tts
    counter = ForwardCounter(tts.model)
    try:
        stream = tts.stream("a longer sentence", VoiceSettings())
        next(stream)
        stream.close()
        frozen = counter.calls
        time.sleep(0.2)
        assert counter.calls == frozen
        assert frozen < 60  # it stopped before its 60-token budget
    finally:
        counter.remove()


def test_voice_settings_are_tags_or_warnings(stack: ModelStack) -> None:
    tts: Any = stack.tts
    assert tts.unsupported(VoiceSettings(voice="Tingting", emotion="happy", dialect="粤语", style="rap")) == []
    assert tts.unsupported(VoiceSettings(voice="heart", emotion="bored")) == ["emotion", "voice"]
    assert tts.unsupported(VoiceSettings(clone_audio=np.zeros(100, np.float32))) == ["clone_audio"]
    assert tts.unsupported(VoiceSettings(clone_text="hi")) == ["clone_text"]
    prompt, speaker, decoder = tts._prompt(VoiceSettings(style="rap"), "RAP")
    assert (prompt.name, speaker, decoder.name) == ("TingtingRAP", "Tingting", "CosyVoice-300M-25Hz-Music")
    prompt, speaker, decoder = tts._prompt(VoiceSettings(), "")
    assert (prompt.name, speaker, decoder.name) == ("Tingting", "Tingting", "CosyVoice-300M-25Hz")
    audio = list(tts.stream("yo", VoiceSettings(style="rap", emotion="happy")))
    assert sum(a.size for a in audio) > 0


def test_voice_cloning_uses_the_sample_and_its_transcript(stack: ModelStack) -> None:
    tts: Any = stack.tts
    sample = speech(1.5, seed=7)
    voice = VoiceSettings(clone_audio=sample, clone_text="这是克隆样本")
    prompt, speaker, _ = tts._prompt(voice, "")
    assert speaker == "" and prompt.text == "这是克隆样本"
    assert list(prompt.codes) == stack.tokenizer.tokenize(clean_sample(sample))  # type: ignore[attr-defined]
    assert prompt.embedding.shape == (192,) and prompt.feat.shape[1] == 80
    assert tts._prompt(voice, "")[0] is prompt  # prepared once per sample
    audio = np.concatenate(list(tts.stream("新的句子", voice)))
    assert audio.size / 22050 == pytest.approx(1.44, rel=0.05)


def test_decoder_chunks_join_to_the_one_pass_length(stack: ModelStack) -> None:
    tts: Any = stack.tts
    prompt = tts.speakers.registered("Tingting", tts.common)
    codes = [int(c) for c in np.random.default_rng(5).integers(0, fmt.AUDIO_CODES, 5 * 23)]
    stream = StreamingDecode(tts.common, prompt, ChunkPlan(4, 10, 1))
    pieces = [a for i in range(0, len(codes), 5) for a in stream.push(codes[i : i + 5])]
    pieces += list(stream.finish())
    assert stream.chunks == [(0, 4), (4, 14), (14, 23)]
    one_pass = tts.common.synthesize(codes, prompt)
    total = sum(p.size for p in pieces)
    assert abs(total - one_pass.size) <= 3 * 256  # within a few mel frames of rounding
    assert np.isfinite(np.concatenate(pieces)).all()

