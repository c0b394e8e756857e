"""What TTS-3B reads: instruction tags in front of the text, the system prompts, and the prompt token layout.

Tags: the text may start with parenthesised tags, built as `(emotion)(language)(speed)text`; `(RAP)` or `(哼唱)`
as the first tag switches to the music decoder and its own system prompt. Prompt layout (token ids):

    BOS  BOT "system\\n<prompt>" EOT
         BOT "human\\n" <prompt text> EOT  BOT "assistant\\n" <prompt audio ids> EOT
         BOT "human\\n" <text> EOT          BOT "assistant\\n"

where the prompt text/audio is the registered speaker's sample or, for cloning, the caller's sample and its
transcript. Session voice settings (English or Chinese names) map onto the tag vocabulary below; values outside
it are reported as unsupported rather than passed through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.interfaces import VoiceSettings
from models.step_audio.chat_format import BOS_ID, BOT_ID, EOT_ID

EMOTIONS = ("高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1")
LANGUAGES = ("中文", "英文", "韩语", "日语", "四川话", "粤语", "广东话")
SPEEDS = ("慢速1", "慢速2", "快速1", "快速2")
MUSIC = ("RAP", "哼唱")

_EMOTION_NAMES = {
    "happy": "高兴", "joy": "高兴", "高兴": "高兴",
    "angry": "生气", "anger": "生气", "生气": "生气",
    "sad": "悲伤", "sadness": "悲伤", "悲伤": "悲伤",
    "coquettish": "撒娇", "cute": "撒娇", "撒娇": "撒娇",
}
_LANGUAGE_NAMES = {
    "chinese": "中文", "mandarin": "中文", "zh": "中文", "中文": "中文",
    "english": "英文", "en": "英文", "英文": "英文",
    "korean": "韩语", "ko": "韩语", "韩语": "韩语",
    "japanese": "日语", "ja": "日语", "日语": "日语",
    "sichuanese": "四川话", "四川话": "四川话",
    "cantonese": "粤语", "yue": "粤语", "粤语": "粤语", "广东话": "广东话",
}
_STYLE_NAMES = {"rap": "RAP", "humming": "哼唱", "hum": "哼唱", "sing": "哼唱", "singing": "哼唱", "哼唱": "哼唱"}

SYS_PROMPT_RAP = "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
SYS_PROMPT_HUM = "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"
_TAG_GUIDE = (
    "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，"
    "以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
    "# 情感标签涵盖了多种情绪状态，包括但不限于：\n- \"高兴1\"\n- \"高兴2\"\n- \"生气1\"\n- \"生气2\"\n- \"悲伤1\"\n"
    "- \"撒娇1\"\n\n"
    "# 语种或方言标签包含多种语言或方言，包括但不限于：\n- \"中文\"\n- \"英文\"\n- \"韩语\"\n- \"日语\"\n- \"四川话\"\n"
    "- \"粤语\"\n- \"广东话\"\n\n"
    "# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n- \"RAP\"\n- \"哼唱\"\n\n"
    "# 语音调整标签，包括但不限于：\n- \"慢速1\"\n- \"慢速2\"\n- \"快速1\"\n- \"快速2\"\n\n"
)
_TAG_ADVICE = (
    "根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，"
    "以确保文本的情感和意义得到准确而生动的传达，如果没有()或（）括号，则根据文本语义内容自由演绎。"
)
SYS_PROMPT_NO_SPEAKER = _TAG_GUIDE + "请在朗读时，" + _TAG_ADVICE
SYS_PROMPT_SPEAKER = _TAG_GUIDE + "请在朗读时，使用[{}]的声音，" + _TAG_ADVICE

_FIRST_TAG = re.compile(r"^([（(][^()（）]*[）)])", re.DOTALL)


@dataclass(frozen=True)
class Tags:
    emotion: str = ""
    language: str = ""
    speed: str = ""
    music: str = ""
    unsupported: tuple[str, ...] = ()

    def prefix(self) -> str:
        # The music tag goes first: the release only looks at the first tag to switch decoders.
        return "".join(f"({t})" for t in (self.music, self.emotion, self.language, self.speed) if t)


def _emotion(value: str) -> str | None:
    v = value.strip().lower()
    if v in EMOTIONS:
        return v
    m = re.fullmatch(r"([^\d\s]+)\s*(\d)?", v)
    if m is None or m.group(1) not in _EMOTION_NAMES:
        return None
    tag = f"{_EMOTION_NAMES[m.group(1)]}{m.group(2) or '1'}"
    return tag if tag in EMOTIONS else None


def speed_tag(speed: float) -> str:
    """Session speed (0.5..2.0) to the nearest tag; 0.9..1.1 needs none."""
    if speed <= 0.7:
        return "慢速2"
    if speed < 0.9:
        return "慢速1"
    if speed <= 1.1:
        return ""
    return "快速1" if speed <= 1.4 else "快速2"


def tags_for(voice: VoiceSettings) -> Tags:
    bad: list[str] = []
    emotion = ""
    if voice.emotion:
        emotion = _emotion(voice.emotion) or ""
        if not emotion:
            bad.append("emotion")
    language = ""
    if voice.dialect:
        language = _LANGUAGE_NAMES.get(voice.dialect.strip().lower(), "")
        if not language:
            bad.append("dialect")
    music = ""
    if voice.style:
        music = _STYLE_NAMES.get(voice.style.strip().lower(), voice.style.strip() if voice.style.strip() in MUSIC
                                 else "")
        if not music:
            bad.append("style")
    return Tags(emotion, language, speed_tag(voice.speed or 1.0), music, tuple(bad))


def instruction(text: str) -> str:
    """The first tag's content, as the release reads it ('' when the text has none)."""
    m = _FIRST_TAG.match(text)
    return m.group(1).strip("()（）") if m else ""


def system_prompt(text: str, speaker: str) -> str:
    name = instruction(text)
    if name in MUSIC:
        return SYS_PROMPT_HUM if "哼唱" in text else SYS_PROMPT_RAP
    return SYS_PROMPT_SPEAKER.format(speaker) if speaker else SYS_PROMPT_NO_SPEAKER


def prompt_ids(
    encode: Callable[[str], list[int]],
    text: str,
    speaker: str,
    prompt_text: str,
    prompt_audio_ids: Sequence[int],
) -> list[int]:
    """The full TTS prompt; `encode` tokenizes without special tokens. `speaker` is '' when cloning."""
    newline = encode("\n")

    def mid(s: str) -> list[int]:
        # Tokenized after a newline so a sentencepiece tokenizer does not add a word-start marker to the text.
        ids = encode("\n" + s)
        return ids[len(newline):]

    human, assistant = encode("human\n"), encode("assistant\n")
    ids = [BOS_ID, BOT_ID, *encode(f"system\n{system_prompt(text, speaker)}"), EOT_ID]
    ids += [BOT_ID, *human, *mid(prompt_text), EOT_ID]
    ids += [BOT_ID, *assistant, *prompt_audio_ids, EOT_ID]
    ids += [BOT_ID, *human, *mid(text), EOT_ID]
    ids += [BOT_ID, *assistant]
    return ids
