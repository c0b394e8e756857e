"""The real page completes a voice turn in headless Debian Chromium (Playwright) and Firefox ESR (WebDriver BiDi)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.audio import to_int16
from tests.conftest import free_port, silence, speak

pytestmark = [pytest.mark.browser, pytest.mark.models, pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
FIREFOX_DRIVER = Path(__file__).with_name("firefox")


def fake_mic(path: Path) -> Path:
    """Silence, a question, then a long silence: Chromium loops the file, the test ends before it repeats."""
    audio, rate = speak("What is the capital of France?")
    samples = np.concatenate([silence(1500, rate), audio, silence(20000, rate)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_int16(samples).tobytes())
    return path


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_page_completes_a_turn_in_chromium(embedded_server: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    wav = fake_mic(tmp_path / "question.wav")
    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
        "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await page.goto(embedded_server)
            assert await page.title() == "Parley — voice call"
            await page.click("#call")
            await page.wait_for_function("window.parley.state === 'listening'", timeout=30000)
            await page.wait_for_function(
                "window.parley.events.some(e => e.type === 'response.done')", timeout=90000
            )
            await page.wait_for_timeout(500)
            user_text = await page.inner_text("#transcript li.user")
            assistant_text = await page.inner_text("#transcript li.assistant")
            assert "capital of france" in user_text.lower(), user_text
            assert "paris" in assistant_text.lower(), assistant_text
            # The page heard the reply: its analyser saw speech-level audio on the remote track.
            level = await page.evaluate("window.parley.remoteLevelMax")
            frames = await page.evaluate("window.parley.remoteSpeechFrames")
            assert level > 0.02 and frames > 10, (level, frames, console)
            await page.wait_for_function("window.parley.inboundAudioEnergy > 0.01", timeout=5000)
            # The latency table shows the turn.
            rows = await page.locator("#latency tr").count()
            assert rows == 1
            cell = await page.inner_text("#latency tr td:nth-child(2)")
            assert cell.endswith("ms"), cell
            await page.screenshot(path=str(tmp_path / "call.png"), full_page=True)
            await page.click("#hangup")
            await page.wait_for_function("window.parley.state === 'idle'", timeout=5000)
        finally:
            await browser.close()


def can_make_namespaces() -> bool:
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not Path(FIREFOX).exists() or not (FIREFOX_DRIVER / "node_modules").exists(),
                    reason="firefox-esr or tests/firefox/node_modules (npm ci) missing")
@pytest.mark.skipif(not can_make_namespaces(), reason="needs root to make a network namespace")
async def test_page_completes_a_turn_in_firefox(tmp_path: Path) -> None:
    wav = fake_mic(tmp_path / "question.wav")
    run = subprocess.run(["unshare", "-n", str(FIREFOX_DRIVER / "run.sh"), str(free_port()), str(wav),
                          str(tmp_path / "firefox.png")], capture_output=True, text=True, timeout=220,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, (run.stderr[-3000:], (tmp_path / "firefox.server.log").read_text()[-2000:])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "Firefox" in result["userAgent"]
    assert result["echoCancellation"] is True
    assert result["user"] and "capital of france" in result["user"][0].lower(), result
    assert result["assistant"] and "paris" in result["assistant"][0].lower(), result
    # Reply audio arrived and was decoded with speech energy (Firefox without a sound card cannot run the page's
    # level meter, so this comes from its WebRTC statistics).
    assert result["inboundAudioEnergy"] > 0.01 and result["inboundPackets"] > 100, result
    assert result["latencyRows"] == 1


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_page_calls_a_keyed_server_with_a_client_secret(tmp_path: Path) -> None:
    """With an API key set, the page connects with the one-call secret in its URL fragment, never the key."""
    import aiohttp
    from playwright.async_api import async_playwright

    from tests.conftest import run_server

    key = "sk-browser-" + "b" * 24
    config = f'[server]\napi_key = "{key}"\n[models]\nstack = "echo"\n'
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection"]
    with run_server(tmp_path, config, ready_timeout=90) as url:
        async with aiohttp.ClientSession() as http, http.post(
                f"{url}/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {key}"}) as r:
            secret = (await r.json())["value"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                page = await browser.new_page()
                requests: list[str] = []
                page.on("request", lambda req: requests.append(f"{req.url} {req.headers.get('authorization')}"))
                await page.goto(f"{url}/#client_secret={secret}")
                await page.click("#call")
                await page.wait_for_function("window.parley.state === 'listening'", timeout=30000)
                assert await page.evaluate("location.hash") == ""  # the used secret left the address bar
                assert not any(key in line for line in requests)
                assert any(line.endswith(f"/offer Bearer {secret}") for line in requests), requests
                await page.click("#hangup")
                await page.wait_for_function("window.parley.state === 'idle'", timeout=5000)
                # Calling again from the same page: the secret is spent, the server says 401 and the page shows it.
                await page.click("#call")
                await page.wait_for_function("!document.getElementById('error').hidden", timeout=15000)
                assert "invalid_api_key" in await page.inner_text("#error")
            finally:
                await browser.close()


# Browser code written for OpenAI's WebRTC flow (the shape of OpenAI's own guide, written here anew): it posts the
# offer as soon as it is created, without waiting for ICE gathering, from a page of another origin.
OPENAI_FLOW_JS = """
async (callsUrl) => {
  const oai = window.oai = {events: [], status: 0, level: 0, location: ""};
  const pc = new RTCPeerConnection();
  pc.ontrack = (e) => {
    // Chromium feeds a remote stream to Web Audio only while a media element plays it.
    const el = document.createElement("audio");
    el.autoplay = true;
    el.srcObject = e.streams[0];
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    ctx.createMediaStreamSource(e.streams[0]).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      for (const x of buf) oai.level = Math.max(oai.level, Math.abs(x));
    }, 50);
  };
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(mic.getTracks()[0]);
  const dc = pc.createDataChannel("oai-events");
  dc.addEventListener("message", (e) => oai.events.push(JSON.parse(e.data)));
  dc.addEventListener("open", () => dc.send(JSON.stringify({type: "session.update", session: {
    type: "realtime", audio: {input: {transcription: {model: "whisper-1"}}}}})));
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const r = await fetch(callsUrl, {method: "POST", body: offer.sdp,
                                   headers: {"Content-Type": "application/sdp", "Authorization": "Bearer ek_none"}});
  oai.status = r.status;
  oai.location = r.headers.get("Location") || "";
  await pc.setRemoteDescription({type: "answer", sdp: await r.text()});
  oai.pc = pc;
}
"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
async def test_openai_browser_webrtc_flow_from_another_origin(tmp_path: Path) -> None:
    import aiohttp
    from playwright.async_api import async_playwright

    from tests.conftest import run_server

    port = free_port()
    page_origin = f"http://localhost:{port}"  # another origin than http://127.0.0.1:{port} for the browser
    config = f'[server]\ncors_origins = ["{page_origin}"]\n\n[models]\nstack = "echo"\n'
    wav = fake_mic(tmp_path / "question.wav")
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
            "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]
    with run_server(tmp_path, config, ready_timeout=90, port=port) as url:
        async with aiohttp.ClientSession() as http:
            async with http.options(f"{url}/v1/realtime/calls", headers={
                    "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}) as r:
                assert "Access-Control-Allow-Origin" not in r.headers, "an origin not listed gets no CORS grant"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                page = await browser.new_page()
                await page.goto(page_origin + "/")
                await page.evaluate(OPENAI_FLOW_JS, f"{url}/v1/realtime/calls?model=parley")
                assert await page.evaluate("window.oai.status") == 201
                assert (await page.evaluate("window.oai.location")).startswith("/v1/realtime/calls/sess_")
                await page.wait_for_function("window.oai.events.some(e => e.type === 'response.done')",
                                             timeout=60000)
                await page.wait_for_timeout(500)
                types = await page.evaluate("window.oai.events.map(e => e.type)")
                level = await page.evaluate("window.oai.level")
                state = await page.evaluate("window.oai.pc.connectionState")
            finally:
                await browser.close()
    assert types[0] == "session.created" and "session.updated" in types
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.committed", "response.created"):
        assert kind in types, types
    assert state == "connected" and level > 0.02, "the reply was heard on the media track"
