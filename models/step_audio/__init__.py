"""The Step-Audio stack (GPU): dual-codebook tokenizer, Step-Audio-Chat and TTS-3B with its decoder.

    VAD          embedded Silero (the release uses its own VAD; any frame-level VAD serves)
    tokenizer    Paraformer + k-means (linguistic) and CosyVoice v1 ONNX (semantic), streaming, 2:3 interleave
    LM           Step-Audio-Chat in-process (transformers) or behind an OpenAI-compatible server (vLLM)
    TTS          Step-Audio-TTS-3B + CosyVoice-300M-25Hz flow/HiFT, streaming in chunks of whole groups

docs/STEP_AUDIO.md says what has been verified without a GPU and what needs the real weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models.interfaces import LanguageModel, Message, ModelStack
from realtime.config import Config

log = logging.getLogger(__name__)


def load(config: Config) -> ModelStack:
    # Heavy imports stay inside: a process running another stack never loads torch.
    import torch

    from models.step_audio import paths
    from models.step_audio.audio_tokens import TOKENS_PER_SECOND
    from models.step_audio.chat import StepChatLM
    from models.step_audio.decoder import ChunkPlan, CosyVoiceDecoder
    from models.step_audio.generation import load_step1, torch_dtype
    from models.step_audio.linguistic import LinguisticModel
    from models.step_audio.semantic import SemanticModel
    from models.step_audio.speakers import Speakers
    from models.step_audio.tokenizer import (
        ChatTranscripts,
        PlaceholderTranscripts,
        StepAudioTokenizer,
        Transcriber,
        WhisperTranscripts,
    )
    from models.step_audio.tts import StepAudioTTS

    sa = config.models.step_audio
    dtype = torch_dtype(sa.dtype)
    tok_device = sa.tokenizer_device or sa.device
    tts_device = sa.tts_device or sa.device
    for device in {tok_device, tts_device, sa.device}:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"[models.step_audio] asks for {device!r} but torch sees no CUDA device "
                               "(set device = \"cpu\" for a CPU run of small checkpoints)")

    files = paths.tokenizer_files(sa.tokenizer_dir)
    linguistic = LinguisticModel.load(files.paraformer, files.centroids, tok_device,
                                      torch.float32 if tok_device == "cpu" else dtype)
    semantic = SemanticModel(files.semantic, tok_device, sa.semantic_window_ms, sa.semantic_context_ms)

    def transcript_tokens(content: str) -> int:
        seconds = content.count("<audio_") / TOKENS_PER_SECOND
        return int(16 + 8 * seconds)  # ~3 words a second, generously

    lm: LanguageModel
    transcribe: Any
    if sa.chat_backend == "openai":
        from models.openai_compat.client import OpenAILM

        remote = OpenAILM(config.models.openai)
        lm = remote

        def transcribe(content: str) -> str:
            return remote.complete_blocking([Message("system", sa.asr_prompt), Message("user", content)],
                                            transcript_tokens(content))

        chat_info = f"Step-Audio-Chat at {config.models.openai.base_url}"
    else:
        chat_dir = paths.step1_folder(sa.chat_dir, "chat_dir", "Step-Audio-Chat")
        chat = StepChatLM.load(chat_dir, sa.chat_device_map if sa.device != "cpu" else "cpu", dtype, sa.top_p,
                               sa.step1_code)
        lm = chat

        def transcribe(content: str) -> str:
            return chat.transcribe(content, sa.asr_prompt, transcript_tokens(content))

        chat_info = f"{chat_dir} ({sa.step1_code} code, {sa.dtype})"

    transcripts: Transcriber
    if sa.transcript == "whisper":
        from models import embedded

        # Language detection on: Step-Audio callers speak Chinese, English, Japanese, Korean, dialects.
        whisper = embedded.load_tokenizer(config, language="")
        transcripts = WhisperTranscripts(whisper, config.models.embedded.asr_segment_ms)
    elif sa.transcript == "chat":
        transcripts = ChatTranscripts(transcribe)
    else:
        transcripts = PlaceholderTranscripts()
    tokenizer = StepAudioTokenizer(linguistic, semantic, transcripts, sa.segment_ms)

    from transformers import AutoTokenizer

    tts_dir = paths.step1_folder(sa.tts_dir, "tts_dir", "Step-Audio-TTS-3B")
    tts_tokenizer = AutoTokenizer.from_pretrained(tts_dir, trust_remote_code=True)
    tts_model = load_step1(tts_dir, dtype, tts_device, sa.step1_code)
    common_dir = paths.decoder_folder(tts_dir, False)
    assert common_dir is not None  # the common decoder is required: decoder_folder raises when it is missing
    common = CosyVoiceDecoder.load(common_dir, tts_device, dtype, sa.flow_steps, sa.flow_cfg_rate)
    music_dir = paths.decoder_folder(tts_dir, True)
    music = (CosyVoiceDecoder.load(music_dir, tts_device, dtype, sa.flow_steps, sa.flow_cfg_rate)
             if music_dir is not None else None)
    speakers_dir = Path(sa.speakers_dir).expanduser() if sa.speakers_dir else tts_dir / "speakers"
    speakers = Speakers(speakers_dir if speakers_dir.is_dir() else None, tokenizer.tokenize)
    if not speakers.has(sa.speaker):
        raise paths.StepAudioFilesError(
            f"prompt speaker {sa.speaker!r} not found in {speakers_dir}/speakers_info.json: copy the release's "
            "speakers/ folder there or set [models.step_audio].speakers_dir / speaker"
        )
    plan = ChunkPlan(sa.decoder_first_chunk_groups, sa.decoder_chunk_groups, sa.decoder_overlap_groups)
    tts = StepAudioTTS(tts_model, tts_tokenizer, common, music, speakers, sa.speaker, sa.tts_temperature,
                       sa.tts_max_tokens, plan)

    from models import embedded

    vad = embedded.load_vad(config)
    info = {
        "vad": "silero-vad 6.2.3",
        "tokenizer": f"{files.paraformer} (linguistic on {tok_device}, "
                     f"semantic window {sa.semantic_window_ms} ms)",
        "transcript": sa.transcript,
        "lm": chat_info,
        "tts": f"{tts_dir} on {tts_device}; decoders: {common.name}{', ' + music.name if music else ''}",
        "attention": attention_note(sa.device),
    }
    log.info("step-audio stack: %s", info)
    return ModelStack(name="step-audio", vad=vad, tokenizer=tokenizer, lm=lm, tts=tts, info=info)


def attention_note(device: str) -> str:
    """What attention the Step1 models get here (reported in /healthz)."""
    if not device.startswith("cuda"):
        return "sdpa with the sqrt-ALiBi bias (CPU)"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        flash = "flash-attn not installed"
    else:
        flash = "flash-attn installed but not used: its kernels take no sqrt-ALiBi bias"
    return f"sdpa with the sqrt-ALiBi bias, or the folder's Optimus kernel if its code loads it; {flash}"
