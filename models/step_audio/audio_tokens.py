"""The dual-codebook token format: 2 linguistic + 3 semantic codes per 120 ms group, as text and as ids.

Linguistic codes (Paraformer + k-means, 16.7 Hz, 1024 codes) and semantic codes (CosyVoice v1, 25 Hz, 4096 codes)
are interleaved in groups of 2 + 3. In the chat model's text a linguistic code c is `<audio_{c}>` and a semantic
code c is `<audio_{1024+c}>`, with no separators; as TTS token ids they are 65536 + c and 65536 + 1024 + c.
"Code" below means the position in that joint 5120-entry space (linguistic 0..1023, semantic 1024..5119).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

LINGUISTIC_CODES = 1024
SEMANTIC_CODES = 4096
AUDIO_CODES = LINGUISTIC_CODES + SEMANTIC_CODES
LINGUISTIC_PER_GROUP = 2
SEMANTIC_PER_GROUP = 3
GROUP_TOKENS = LINGUISTIC_PER_GROUP + SEMANTIC_PER_GROUP
GROUP_MS = 120
TOKENS_PER_SECOND = GROUP_TOKENS * 1000 / GROUP_MS  # 41.67
AUDIO_ID_BASE = 65536
TTS_VOCAB = 74752

_AUDIO_TAG = re.compile(r"<audio_(\d+)>")


def group_count(linguistic: int, semantic: int) -> int:
    """Whole groups that the two streams can fill."""
    return min(semantic // SEMANTIC_PER_GROUP, linguistic // LINGUISTIC_PER_GROUP)


def interleave(linguistic: Sequence[int], semantic: Sequence[int], groups: int | None = None) -> list[int]:
    """Joint codes of the first `groups` whole groups (all that fit by default); a partial group is dropped."""
    n = group_count(len(linguistic), len(semantic)) if groups is None else groups
    if n > group_count(len(linguistic), len(semantic)):
        raise ValueError(f"{n} groups need {2 * n} linguistic and {3 * n} semantic codes")
    out: list[int] = []
    for g in range(n):
        out.extend(int(c) for c in linguistic[2 * g : 2 * g + 2])
        out.extend(LINGUISTIC_CODES + int(c) for c in semantic[3 * g : 3 * g + 3])
    return out


def deinterleave(codes: Sequence[int]) -> tuple[list[int], list[int]]:
    """Joint codes back to (linguistic, semantic) raw codes; checks the 2:3 pattern."""
    if len(codes) % GROUP_TOKENS:
        raise ValueError(f"{len(codes)} codes are not whole groups of {GROUP_TOKENS}")
    linguistic: list[int] = []
    semantic: list[int] = []
    for i, c in enumerate(codes):
        if i % GROUP_TOKENS < LINGUISTIC_PER_GROUP:
            if not 0 <= c < LINGUISTIC_CODES:
                raise ValueError(f"code {c} at {i} should be linguistic")
            linguistic.append(c)
        else:
            if not LINGUISTIC_CODES <= c < AUDIO_CODES:
                raise ValueError(f"code {c} at {i} should be semantic")
            semantic.append(c - LINGUISTIC_CODES)
    return linguistic, semantic


def audio_text(codes: Iterable[int]) -> str:
    """The chat model's text form: `<audio_N>` per code, no separators."""
    return "".join(f"<audio_{c}>" for c in codes)


def parse_audio_text(text: str) -> list[int]:
    return [int(m) for m in _AUDIO_TAG.findall(text)]


def is_audio_text(text: str) -> bool:
    """True when `text` is nothing but `<audio_N>` tags (an audio turn's content)."""
    stripped = text.strip()
    return bool(stripped) and not _AUDIO_TAG.sub("", stripped).strip()


def tts_ids(codes: Iterable[int]) -> list[int]:
    return [AUDIO_ID_BASE + c for c in codes]


def codes_from_ids(ids: Iterable[int]) -> list[int]:
    """Joint codes from token ids, keeping only ids inside the audio range."""
    return [i - AUDIO_ID_BASE for i in ids if AUDIO_ID_BASE <= i < AUDIO_ID_BASE + AUDIO_CODES]


def duration_ms(codes: int) -> float:
    return codes / GROUP_TOKENS * GROUP_MS
