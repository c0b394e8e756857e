"""Where the release's files live inside the three model folders, with errors that say what is missing.

    Step-Audio-Tokenizer/  dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
                             (config.yaml, model.pt, am.mvn), linguistic_tokenizer.npy, speech_tokenizer_v1.onnx
    Step-Audio-Chat/       config.json, tokenizer files, *.safetensors (+ the folder's modeling code)
    Step-Audio-TTS-3B/     the same, plus CosyVoice-300M-25Hz/ and CosyVoice-300M-25Hz-Music/
                             (cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARAFORMER = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn")
COMMON_DECODER = "CosyVoice-300M-25Hz"
MUSIC_DECODER = "CosyVoice-300M-25Hz-Music"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


class StepAudioFilesError(FileNotFoundError):
    """A configured Step-Audio folder is missing or incomplete; the message names the key and the files."""


def folder(value: str, key: str, what: str) -> Path:
    if not value:
        raise StepAudioFilesError(f"[models.step_audio].{key} is empty: set it to your local {what} folder")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise StepAudioFilesError(f"[models.step_audio].{key} = {value!r}: no such folder (expected {what})")
    return path


@dataclass(frozen=True)
class TokenizerFiles:
    paraformer: Path
    centroids: Path
    semantic: Path


def tokenizer_files(value: str) -> TokenizerFiles:
    root = folder(value, "tokenizer_dir", "Step-Audio-Tokenizer")
    paraformer = root / PARAFORMER
    if not all((paraformer / f).is_file() for f in PARAFORMER_FILES):
        # Accept the Paraformer folder anywhere below (copies sometimes flatten the ModelScope path).
        found = [p.parent for p in sorted(root.rglob("am.mvn"))
                 if all((p.parent / f).is_file() for f in PARAFORMER_FILES)]
        if not found:
            raise StepAudioFilesError(
                f"{root}: no Paraformer folder ({PARAFORMER}/ with {', '.join(PARAFORMER_FILES)})"
            )
        paraformer = found[0]
    missing = [f for f in ("linguistic_tokenizer.npy", "speech_tokenizer_v1.onnx") if not (root / f).is_file()]
    if missing:
        raise StepAudioFilesError(f"{root}: missing {', '.join(missing)}")
    return TokenizerFiles(paraformer, root / "linguistic_tokenizer.npy", root / "speech_tokenizer_v1.onnx")


def step1_folder(value: str, key: str, what: str) -> Path:
    root = folder(value, key, what)
    problems = []
    if not (root / "config.json").is_file():
        problems.append("config.json")
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        problems.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if not (any(root.glob("*.safetensors")) or any(root.glob("*.bin"))):
        problems.append("weights (*.safetensors)")
    if problems:
        raise StepAudioFilesError(f"{root} ({what}): missing {', '.join(problems)}")
    return root


def decoder_folder(tts_root: Path, music: bool) -> Path | None:
    path = tts_root / (MUSIC_DECODER if music else COMMON_DECODER)
    if path.is_dir():
        return path
    if music:
        return None  # optional: RAP and humming are then reported as unsupported
    raise StepAudioFilesError(
        f"{tts_root}: no {COMMON_DECODER}/ folder (flow.pt, hift.pt, campplus.onnx, cosyvoice.yaml)"
    )
