"""Shared fixtures: real Parley servers in subprocesses, and real speech.

Servers run `server.py` exactly as a user would, on a free loopback port, with a config file written per test
module. Speech comes from hibari-tts (natural, 24 kHz) or Debian's pocketsphinx-testdata (human read speech).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from benchmarks.server_process import free_port, healthz
from benchmarks.wer import word_error_rate, words  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@contextlib.contextmanager
def run_server(tmp_path: Path, config: str = "", name: str = "server", ready_timeout: float = 180,
               port: int | None = None) -> Iterator[str]:
    """Start `server.py` with `config` (TOML text appended to nothing: defaults otherwise); yield its URL."""
    port = port or free_port()
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(config)
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--config", str(cfg), "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                tail = (tmp_path / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
            with contextlib.suppress(OSError, ValueError):
                if healthz(url)["status"] == "ok":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {ready_timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded-stack server shared by the tests that do not need their own settings."""
    with run_server(tmp_path_factory.mktemp("embedded"), "[server]\nmax_sessions = 6\n") as url:
        yield url


@cache
def _tts():  # type: ignore[no-untyped-def]
    from hibari import Hibari

    return Hibari()


def speak(text: str, seed: int = 0) -> tuple[np.ndarray, int]:
    """Synthesized speech (float32 mono, 24 kHz) with no leading or trailing silence."""
    audio = _tts()(text, seed=seed)
    return trim(audio, 24000), 24000


def trim(audio: np.ndarray, rate: int, dbfs: float = -40.0) -> np.ndarray:
    frame = rate // 100
    levels = [20 * np.log10(max(float(np.sqrt(np.mean(audio[i : i + frame] ** 2))), 1e-6))
              for i in range(0, audio.size - frame, frame)]
    loud = [i for i, lv in enumerate(levels) if lv > dbfs]
    if not loud:
        return audio
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


def silence(ms: int, rate: int = 24000) -> np.ndarray:
    return np.zeros(rate * ms // 1000, np.float32)


def librivox(name: str) -> tuple[np.ndarray, int, str]:
    """A recording of human read speech from pocketsphinx-testdata, with its transcript."""
    from benchmarks.client import load_wav

    wav = LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{name}.wav"
    transcripts = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, ident = line.rpartition("(")
        transcripts[ident.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    samples, rate = load_wav(wav)
    return samples, rate, transcripts[wav.stem]


