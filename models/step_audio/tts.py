"""Step-Audio-TTS-3B + the CosyVoice decoder as Parley's SpeechSynthesizer, streaming.

TTS-3B (a Step1 model) writes the interleaved audio ids for a piece of text after a prompt that shows it a
speaker's sample (transcript, then the sample's own audio ids). Sampling follows the release: temperature 0.7,
transformers' default top-k 50, and its repetition rule (a token filling over a tenth of the last ten may not
follow). Audio ids are handed to the decoder as they come, and audio chunks leave as whole groups are decoded.
Voice settings become tags (`tts_format`); `(RAP)` / `(哼唱)` switch to the music decoder and the speaker's
music prompt (`<speaker>RAP`, `<speaker>哼唱`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from models.interfaces import VoiceSettings
from models.step_audio import audio_tokens as fmt
from models.step_audio import tts_format
from models.step_audio.chat_format import EOT_ID
from models.step_audio.decoder import SAMPLE_RATE, ChunkPlan, CosyVoiceDecoder, SpeakerPrompt, StreamingDecode
from models.step_audio.generation import PrefixCache, decode, repetition_aware, sampler
from models.step_audio.speakers import Speakers

log = logging.getLogger(__name__)


class StepAudioTTS:
    sample_rate = SAMPLE_RATE

    def __init__(self, model: Any, tokenizer: Any, common: CosyVoiceDecoder, music: CosyVoiceDecoder | None,
                 speakers: Speakers, default_speaker: str, temperature: float, max_tokens: int,
                 plan: ChunkPlan) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.common = common
        self.music = music
        self.speakers = speakers
        self.default_speaker = default_speaker
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.plan = plan
        self._prefix = PrefixCache()
        self._stop = {EOT_ID}
        self._utterances = 0

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def unsupported(self, voice: VoiceSettings) -> list[str]:
        bad = list(tts_format.tags_for(voice).unsupported)
        if voice.voice and not self.speakers.has(voice.voice):
            bad.append("voice")
        if voice.clone_audio is not None and not voice.clone_text:
            bad.append("clone_audio")
        elif voice.clone_text and voice.clone_audio is None:
            bad.append("clone_text")
        tags = tts_format.tags_for(voice)
        if tags.music and "style" not in bad and self.music is None:
            bad.append("style")
        return bad

    def _prompt(self, voice: VoiceSettings, music: str) -> tuple[SpeakerPrompt, str, CosyVoiceDecoder]:
        """(prompt, speaker name for the system prompt, decoder)."""
        decoder = self.music if music and self.music is not None else self.common
        if voice.clone_audio is not None and voice.clone_text:
            return self.speakers.clone(voice.clone_audio, voice.clone_text, decoder), "", decoder
        speaker = voice.voice if voice.voice and self.speakers.has(voice.voice) else self.default_speaker
        if music and self.speakers.has(speaker + music):
            return self.speakers.registered(speaker + music, decoder), speaker, decoder
        return self.speakers.registered(speaker, decoder), speaker, decoder

    def stream(self, text: str, voice: VoiceSettings) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        tags = tts_format.tags_for(voice)
        if tags.music and self.music is None:
            tags = tts_format.Tags(tags.emotion, tags.language, tags.speed)
        tagged = tags.prefix() + text.strip()
        prompt, speaker, decoder = self._prompt(voice, tags.music)
        ids = tts_format.prompt_ids(self.encode, tagged, speaker, prompt.text, fmt.tts_ids(prompt.codes))
        pick = repetition_aware(sampler(self.temperature, 1.0, top_k=50))
        self._utterances += 1
        out = StreamingDecode(decoder, prompt, self.plan, seed=self._utterances)
        stray = 0
        for token in decode(self.model, ids, self.max_tokens, pick, self._stop, self._prefix):
            codes = fmt.codes_from_ids([token])
            if not codes:
                stray += 1
                continue
            yield from out.push(codes)
        yield from out.finish()
        if stray:
            log.debug("TTS-3B wrote %d non-audio tokens for %r (skipped)", stray, text[:40])
