"""Readiness that means it: /readyz stays 503 until every model has run once, and a broken model stops start-up.

Real `server.py` processes with the real embedded models; the broken cases point the model folder at copies of
the assembled files with one of them damaged, as a truncated download or a bad disk would leave it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.client import ParleyCall
from benchmarks.server_process import free_port
from models.assets import ASSETS, model_path
from tests.conftest import ROOT, healthz, run_server

pytestmark = [pytest.mark.models, pytest.mark.timeout(240)]


def get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start(tmp_path: Path, config: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    cfg, log = tmp_path / "server.toml", tmp_path / "server.log"
    cfg.write_text(config)
    proc = subprocess.Popen([sys.executable, "server.py", "--config", str(cfg), "--port", str(port)], cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


def first_answer(proc: subprocess.Popen[bytes], url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return get(f"{url}/readyz")
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server never answered HTTP")


def models_with(tmp_path: Path, key: str, damage: str) -> Path:
    """A model folder of links to the assembled models, with `damage` (a file of `key`) cut to 1 KiB."""
    root = tmp_path / "models"
    for asset in ASSETS.values():
        try:
            src = model_path(asset.key)
        except Exception:
            continue
        dest = root / asset.folder
        dest.mkdir(parents=True)
        for piece in asset.pieces:
            if asset.key == key and piece.name == damage:
                (dest / piece.name).write_bytes((src / piece.name).read_bytes()[:1024])
            else:
                os.symlink(src / piece.name, dest / piece.name)
    return root


def test_readyz_is_503_until_every_stage_has_run_then_200(tmp_path: Path) -> None:
    proc, url, log = start(tmp_path, "")
    try:
        status, body = first_answer(proc, url)
        assert status == 503 and body["ready"] is False and body["reason"], body
        health = healthz(url)  # liveness answers while loading, and says it is not ready
        assert health["ready"] is False and health["status"] == "loading"
        deadline = time.monotonic() + 180
        while get(f"{url}/readyz")[0] != 200:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "not ready in 180 s"
            time.sleep(0.2)
        health = healthz(url)
        assert health["ready"] is True and health["status"] == "ok"
        assert set(health["warm_up_ms"]) == {"vad", "tts", "asr", "turn", "lm"}, health["warm_up_ms"]
        text = log.read_text()
        # "listening" is said once, after the warm-up, and the ASR pass heard the warm-up sentence.
        assert text.count("ready: listening on") == 1
        assert text.index("loaded and warm") < text.index("ready: listening on")
        assert "hear me" in text.split("ASR heard", 1)[1].split("\n", 1)[0].lower()
    finally:
        proc.terminate()
        proc.wait(15)


async def test_readyz_reports_a_full_worker(tmp_path: Path) -> None:
    # A load balancer must stop sending calls to a worker at max_sessions; liveness stays fine.
    with run_server(tmp_path, '[models]\nstack = "echo"\n[server]\nmax_sessions = 1\n') as url:
        assert get(f"{url}/readyz")[0] == 200
        call = ParleyCall(url)
        await call.connect()
        try:
            status, body = get(f"{url}/readyz")
            assert status == 503 and body["reason"] == "at capacity"
            assert healthz(url)["ready"] is True
        finally:
            await call.close()


@pytest.mark.parametrize(("key", "damage", "stage"), [
    ("qwen2.5-0.5b", "model.gguf", "lm"),
    ("whisper-base", "model.bin", "asr"),
])
def test_a_damaged_model_stops_start_up_naming_the_model_and_the_remedy(
        tmp_path: Path, key: str, damage: str, stage: str) -> None:
    root = models_with(tmp_path, key, damage)
    proc, _, log = start(tmp_path, f'[models.embedded]\nmodel_dir = "{root}"\n')
    try:
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 3, text[-2000:]
    assert f"the {stage} model ({key}) failed to load" in text, text[-2000:]
    assert "./parley.sh setup serve" in text
    assert "ready: listening" not in text


def test_an_lm_server_that_is_not_up_yet_is_waited_for(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens on it
    config = f'[models]\nstack = "openai"\n[models.openai]\nbase_url = "http://127.0.0.1:{dead}/v1"\nmodel = "x"\n'
    proc, url, _ = start(tmp_path, config)
    try:
        deadline = time.monotonic() + 90
        while True:
            status, body = first_answer(proc, url)
            assert status == 503
            if "waiting for the LM server" in body["reason"]:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
        assert proc.poll() is None  # alive, retrying, not crashed
        assert healthz(url)["status"] == "loading"
    finally:
        proc.terminate()
        proc.wait(15)
