"""Step-Audio's formats, worked from the release's published facts: no model weights involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.interfaces import Message, VoiceSettings
from models.step_audio import audio_tokens as fmt
from models.step_audio import chat_format, fbank, mel, tts_format
from models.step_audio.decoder import (
    ChunkPlan,
    SpeakerPrompt,
    StreamingDecode,
    configs_from_yaml,
    crossfade,
    read_hyperpyyaml,
)

# --- interleaving ------------------------------------------------------------------------------------------------


def test_groups_are_limited_by_the_scarcer_stream() -> None:
    assert fmt.group_count(linguistic=5, semantic=7) == 2  # min(7 // 3, 5 // 2)
    assert fmt.group_count(linguistic=8, semantic=9) == 3
    assert fmt.group_count(linguistic=1, semantic=30) == 0
    # 16.7 Hz and 25 Hz over 2 s: 33 and 50 codes make 16 groups (120 ms each)
    assert fmt.group_count(33, 50) == 16


def test_interleave_two_linguistic_then_three_semantic() -> None:
    ling = [10, 11, 12, 13, 14]
    sem = [0, 1, 2, 3, 4, 5, 6]
    codes = fmt.interleave(ling, sem)
    assert codes == [10, 11, 1024, 1025, 1026, 12, 13, 1027, 1028, 1029]
    assert fmt.deinterleave(codes) == ([10, 11, 12, 13], [0, 1, 2, 3, 4, 5])
    assert fmt.interleave(ling, sem, groups=1) == codes[:5]
    with pytest.raises(ValueError):
        fmt.interleave(ling, sem, groups=3)
    with pytest.raises(ValueError):
        fmt.deinterleave(codes[:4])
    with pytest.raises(ValueError):
        fmt.deinterleave([1024, 11, 1024, 1025, 1026])  # a semantic code where a linguistic one belongs


def test_text_and_id_offsets() -> None:
    codes = [3, 1023, 1024, 5119]
    assert fmt.audio_text(codes) == "<audio_3><audio_1023><audio_1024><audio_5119>"
    assert fmt.parse_audio_text(fmt.audio_text(codes)) == codes
    assert fmt.is_audio_text("<audio_1><audio_2>") and not fmt.is_audio_text("hi <audio_1>")
    assert fmt.tts_ids(codes) == [65539, 66559, 66560, 70655]
    assert fmt.codes_from_ids([1, 3, 65536, 70655, 70656, 74751]) == [0, 5119]  # text and spare ids dropped
    assert fmt.TTS_VOCAB == 74752 == fmt.AUDIO_ID_BASE + 9216
    assert fmt.TOKENS_PER_SECOND == pytest.approx(41.67, abs=0.01)
    assert fmt.duration_ms(50) == pytest.approx(1200.0)


# --- chat template -----------------------------------------------------------------------------------------------


def test_chat_template() -> None:
    messages = [
        Message("system", "适配用户的语言，用口语化的文字回答"),
        Message("user", "hello"),
        Message("assistant", "hi!"),
        Message("user", "<audio_1><audio_1030>"),
    ]
    assert chat_format.render(messages) == (
        "<|BOT|>system\n适配用户的语言，用口语化的文字回答<|EOT|>"
        "<|BOT|>human\nhello<|EOT|>"
        "<|BOT|>assistant\nhi!<|EOT|>"
        "<|BOT|>human\n<audio_1><audio_1030><|EOT|>"
        "<|BOT|>assistant\n"
    )
    assert chat_format.with_bos([5, 6]) == [1, 5, 6]
    assert chat_format.with_bos([1, 1, 5]) == [1, 5]
    assert (chat_format.BOS_ID, chat_format.EOT_ID, chat_format.BOT_ID) == (1, 3, 4)


def test_tool_turns_are_shown_as_human_text() -> None:
    text = chat_format.render([Message("assistant", ""), Message("tool", '{"time": "12:00"}')])
    assert text == '<|BOT|>human\n(tool result) {"time": "12:00"}<|EOT|><|BOT|>assistant\n'


# --- TTS tags ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("voice", "prefix", "bad"),
    [
        (VoiceSettings(), "", ()),
        (VoiceSettings(emotion="happy"), "(高兴1)", ()),
        (VoiceSettings(emotion="angry2"), "(生气2)", ()),
        (VoiceSettings(emotion="悲伤1", dialect="Cantonese"), "(悲伤1)(粤语)", ()),
        (VoiceSettings(emotion="sad2"), "", ("emotion",)),  # 悲伤 has one level only
        (VoiceSettings(dialect="sichuanese", speed=0.6), "(四川话)(慢速2)", ()),
        (VoiceSettings(speed=0.8), "(慢速1)", ()),
        (VoiceSettings(speed=1.05), "", ()),
        (VoiceSettings(speed=1.3), "(快速1)", ()),
        (VoiceSettings(speed=1.8, emotion="happy2", dialect="english"), "(高兴2)(英文)(快速2)", ()),
        (VoiceSettings(style="rap", emotion="happy"), "(RAP)(高兴1)", ()),
        (VoiceSettings(style="humming"), "(哼唱)", ()),
        (VoiceSettings(style="whisper", dialect="klingon"), "", ("dialect", "style")),
    ],
)
def test_voice_settings_become_tags(voice: VoiceSettings, prefix: str, bad: tuple[str, ...]) -> None:
    tags = tts_format.tags_for(voice)
    assert tags.prefix() == prefix
    assert tags.unsupported == bad


def test_first_tag_selects_music_and_its_prompt() -> None:
    assert tts_format.instruction("(RAP)(高兴1)走起") == "RAP"
    assert tts_format.instruction("（哼唱）啦啦啦") == "哼唱"
    assert tts_format.instruction("(高兴1)(RAP)hi") == "高兴1"  # only the first tag counts, as in the release
    assert tts_format.instruction("no tags") == ""
    assert tts_format.system_prompt("(RAP)yo", "Tingting") == tts_format.SYS_PROMPT_RAP
    assert tts_format.system_prompt("(哼唱)la", "Tingting") == tts_format.SYS_PROMPT_HUM
    assert tts_format.system_prompt("(高兴1)hi", "Tingting") == tts_format.SYS_PROMPT_SPEAKER.format("Tingting")
    assert "[Tingting]" in tts_format.system_prompt("hi", "Tingting")
    assert tts_format.system_prompt("hi", "") == tts_format.SYS_PROMPT_NO_SPEAKER
    for tag in (*tts_format.EMOTIONS, *tts_format.LANGUAGES, *tts_format.SPEEDS, *tts_format.MUSIC):
        assert f'"{tag}"' in tts_format.SYS_PROMPT_NO_SPEAKER  # the prompt lists every tag it supports


def test_cloning_prompt_layout() -> None:
    def encode(text: str) -> list[int]:  # a stand-in tokenizer: one id per character, as a sentencepiece would add
        return [1000 + ord(c) % 500 for c in text]

    audio_ids = fmt.tts_ids([5, 6, 1030, 1031, 1032])
    ids = tts_format.prompt_ids(encode, "(高兴1)新的话", "", "样本文字", audio_ids)
    system = encode(f"system\n{tts_format.SYS_PROMPT_NO_SPEAKER}")
    human, assistant = encode("human\n"), encode("assistant\n")
    expected = [1, 4, *system, 3,
                4, *human, *encode("样本文字"), 3,
                4, *assistant, *audio_ids, 3,
                4, *human, *encode("(高兴1)新的话"), 3,
                4, *assistant]
    assert ids == expected
    # A registered speaker names itself in the system prompt; the layout is the same.
    named = tts_format.prompt_ids(encode, "hi", "Tingting", "你好", audio_ids)
    assert named[2 : 2 + len(encode("system\n" + tts_format.SYS_PROMPT_SPEAKER.format("Tingting")))] == encode(
        "system\n" + tts_format.SYS_PROMPT_SPEAKER.format("Tingting"))


# --- decoder chunking -------------------------------------------------------------------------------------------


class FakeDecoder:
    """Returns, per code, SAMPLES samples holding the code's group index (so cuts are visible)."""

    SAMPLES = 20
    name = "fake"

    def __init__(self) -> None:
        self.windows: list[list[int]] = []

    def synthesize(self, codes: list[int], prompt: SpeakerPrompt, seed: int = 0) -> np.ndarray:
        self.windows.append(list(codes))
        return np.repeat(np.array(codes, np.float32) // 5, self.SAMPLES)


PROMPT = SpeakerPrompt("x", "", (), np.zeros((0, 80), np.float32), np.zeros(192, np.float32))


def test_chunks_are_cut_on_whole_groups_with_overlap() -> None:
    decoder = FakeDecoder()
    stream = StreamingDecode(decoder, PROMPT, ChunkPlan(first_chunk=4, chunk=10, overlap=1))  # type: ignore[arg-type]
    codes = [5 * (i // 5) + i % 5 for i in range(5 * 27 + 3)]  # 27 whole groups and 3 tokens of a 28th
    out = []
    for i in range(0, len(codes), 7):  # arrive in ragged pieces
        out += list(stream.push(codes[i : i + 7]))
    assert stream.chunks == [(0, 4), (4, 14), (14, 24)]
    out += list(stream.finish())
    assert stream.chunks[-1] == (24, 28)
    # Every non-final decode window is whole groups, and starts one group (the overlap) before its chunk.
    starts = [0, 3, 13, 23]
    for window, start in zip(decoder.windows, starts, strict=True):
        assert window[0] // 5 == start
    assert all(len(w) % 5 == 0 for w in decoder.windows[:-1])
    assert len(decoder.windows[-1]) == (28 - 23) * 5 - 2  # the final one carries the partial group
    audio = np.concatenate(out)
    samples_per_group = 5 * FakeDecoder.SAMPLES
    assert abs(audio.size - 27.6 * samples_per_group) <= 2 * samples_per_group / 5
    # Group values never go backwards: overlaps were cross-faded, not repeated.
    group_of_each = audio // 5
    assert np.all(np.diff(np.round(group_of_each)) >= 0)


def test_first_chunk_is_the_short_one() -> None:
    plan = ChunkPlan(first_chunk=4, chunk=10, overlap=1)
    assert plan.ready(0, 3) == 0
    assert plan.ready(0, 4) == 4
    assert plan.ready(4, 13) == 0
    assert plan.ready(4, 14) == 10
    with pytest.raises(ValueError):
        ChunkPlan(first_chunk=1, chunk=10, overlap=1)


def test_crossfade_is_power_preserving_at_the_edges() -> None:
    tail = np.ones(100, np.float32)
    head = np.zeros(120, np.float32)
    mixed = crossfade(tail, head)
    assert mixed.size == 100
    assert mixed[0] > 0.99 and mixed[-1] < 0.01 and np.all(np.diff(mixed) <= 0)


# --- front ends --------------------------------------------------------------------------------------------------


def test_kaldi_fbank_frames_and_incremental_equality() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32) * 3000
    assert fbank.frame_count(399) == 0 and fbank.frame_count(400) == 1 and fbank.frame_count(16000) == 98
    full = fbank.fbank(x)
    assert full.shape == (98, 80) and full.dtype == np.float32
    parts = np.concatenate([fbank.fbank(x[:5000], last=20), fbank.fbank(x[:9000], first=20),
                            fbank.fbank(x, first=54)])
    np.testing.assert_array_equal(parts, full)
    banks = fbank.mel_banks(80)
    assert banks.shape == (80, 257) and np.all(banks[:, -1] == 0)
    assert np.all(banks.max(axis=1) > 0.25)  # every bank covers at least one FFT bin
    assert fbank.fbank(x, window_kind="povey").shape == (98, 80)


def test_low_frame_rate_stacking() -> None:
    feats = np.arange(20 * 2, dtype=np.float32).reshape(20, 2)  # 20 frames of 2 dims: row i = [2i, 2i + 1]
    assert fbank.lfr_count(20, final=False) == 3  # frames 0..2 need fbank rows up to 3, 9, 15
    assert fbank.lfr_count(20, final=True) == 4  # ceil(20 / 6)
    assert fbank.lfr_count(3, final=False) == 0 and fbank.lfr_count(4, final=False) == 1
    out = fbank.lfr(feats, 0, 4)
    assert out.shape == (4, 14)
    rows = out[0].reshape(7, 2)[:, 0] / 2
    assert list(rows) == [0, 0, 0, 0, 1, 2, 3]  # frame 0 repeated 3 times as left padding
    assert list(out[1].reshape(7, 2)[:, 0] / 2) == [3, 4, 5, 6, 7, 8, 9]
    assert list(out[3].reshape(7, 2)[:, 0] / 2) == [15, 16, 17, 18, 19, 19, 19]  # the end repeats the last frame


def test_cmvn_file_round_trip(tmp_path: Path) -> None:
    shift = np.linspace(-1, 1, 560).astype(np.float32)
    scale = np.linspace(0.5, 2, 560).astype(np.float32)
    fbank.write_am_mvn(tmp_path / "am.mvn", shift, scale)
    got_shift, got_scale = fbank.load_am_mvn(tmp_path / "am.mvn")
    np.testing.assert_allclose(got_shift, shift, atol=1e-6)
    np.testing.assert_allclose(got_scale, scale, atol=1e-6)


def test_whisper_and_matcha_mels() -> None:
    x = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    m = mel.whisper_log_mel(x)
    assert m.shape == (128, 100)  # len // 160 frames, the last STFT frame dropped
    assert m.max() - m.min() <= 2.0 + 1e-6  # clamped to 8 decades, then divided by 4
    assert mel.whisper_log_mel(x[:16000 - 160 * 4]).shape == (128, 96)  # 4 frames per semantic token
    y = np.random.default_rng(2).standard_normal(22050).astype(np.float32) * 0.1
    assert mel.matcha_mel(y).shape == (80, 86)
    filters = mel.slaney_filters(16000, 400, 128)
    assert filters.shape == (128, 201) and np.all(filters.sum(axis=1) > 0)


def test_hyperpyyaml_config_is_read_like_the_release(tmp_path: Path) -> None:
    from models.step_audio.synthetic import COSYVOICE_YAML, FLOW, HIFT

    path = tmp_path / "cosyvoice.yaml"
    path.write_text(COSYVOICE_YAML)
    conf = read_hyperpyyaml(path)
    assert conf["flow"]["spk_embed_dim"] == 192  # !ref <spk_embed_dim> resolved
    flow_cfg, hift_cfg = configs_from_yaml(conf, cfg_rate=0.7)
    assert flow_cfg == FLOW
    assert hift_cfg == HIFT


def test_the_jinja_template_for_servers_renders_the_same_prompt() -> None:
    """vLLM renders chat itself: the shipped template must give exactly what Parley renders in-process."""
    import jinja2

    source = (Path(chat_format.__file__).parent / "step1_chat_template.jinja").read_text()
    template = jinja2.Environment().from_string(source)
    messages = [Message("system", "be brief"), Message("user", "<audio_1><audio_1030>"),
                Message("assistant", ""), Message("tool", "42"), Message("assistant", "ok"), Message("user", "hi")]
    rendered = template.render(messages=[{"role": m.role, "content": m.content} for m in messages],
                               bos_token="<s>", add_generation_prompt=True)
    assert rendered == "<s>" + chat_format.render(messages)
