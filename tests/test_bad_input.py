"""Bad input gets a clear error and loses nothing: the server keeps serving and nothing leaks."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from benchmarks.client import ParleyCall
from tests.conftest import ROOT, healthz, run_server, silence, speak

pytestmark = [pytest.mark.models, pytest.mark.timeout(300)]

CONFIG = """
[server]
max_sessions = 2
[webrtc]
media_timeout_ms = 2000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("bad"), CONFIG) as url:
        yield url


async def settle(url: str, timeout: float = 15.0) -> dict:
    """Wait until no session, peer connection or call task is left."""
    deadline = time.monotonic() + timeout
    while True:
        h = healthz(url)
        if h["sessions"] == 0 and h["peer_connections"] == 0:
            return h
        if time.monotonic() > deadline:
            raise AssertionError(f"leak: {h}")
        await asyncio.sleep(0.2)


async def post(url: str, data: bytes | str, content_type: str = "application/json") -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/offer", data=data, headers={"Content-Type": content_type}) as r:
            body = await r.json(content_type=None)
            return r.status, body, dict(r.headers)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request_error"),
        (json.dumps({"type": "offer"}).encode(), 400, "invalid_request_error"),
        (json.dumps({"type": "answer", "sdp": "v=0"}).encode(), 400, "invalid_request_error"),
        (json.dumps({"type": "offer", "sdp": "v=0\r\no=garbage\r\n"}).encode(), 400, "invalid_sdp"),
        (json.dumps({"type": "offer", "sdp": "x", "session": {"speculate_after_ms": 900}}).encode(), 400,
         "invalid_session"),
        (json.dumps({"type": "offer", "sdp": "x", "session": {"bogus": 1}}).encode(), 400, "invalid_session"),
        (json.dumps({"type": "offer", "sdp": "x" * 70000}).encode(), 413, "request_too_large"),
    ],
)
async def test_malformed_offers_get_4xx_and_leak_nothing(server: str, body: bytes, status: int, kind: str) -> None:
    got, answer, _ = await post(server, body)
    assert got == status and answer["error"]["type"] == kind, answer
    assert answer["error"]["message"]
    await settle(server)


async def test_sdp_without_audio_is_refused(server: str) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    status, answer, _ = await post(server, json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
    await pc.close()
    assert status == 400 and "audio" in answer["error"]["message"]
    await settle(server)


async def test_capacity_answers_503_with_retry_after_then_recovers(server: str) -> None:
    calls = [ParleyCall(server) for _ in range(2)]
    for c in calls:
        await c.connect()
    extra = ParleyCall(server)
    with pytest.raises(RuntimeError, match="503"):
        await extra.connect()
    await extra.close()
    status, answer, headers = await post(server, json.dumps({"type": "offer", "sdp": "v=0"}))
    assert status == 503 and headers.get("Retry-After") == "2" and answer["error"]["type"] == "capacity"
    for c in calls:
        await c.close()
    await settle(server)
    again = ParleyCall(server)
    await again.connect()
    await again.close()
    await settle(server)


async def test_garbage_on_the_data_channel_gets_error_events_and_the_call_goes_on(server: str) -> None:
    call = ParleyCall(server, session={"tools": False})
    await call.connect()
    try:
        for junk in ("{oops", "[]", json.dumps({"no": "type"}), json.dumps({"type": "launch.rockets"}),
                     json.dumps({"type": "session.update", "session": {"vad_threshold": 7}}),
                     json.dumps({"type": "session.update", "session": "nope"})):
            call.channel.send(junk)
        call.channel.send(b"\xff\xfe binary garbage")
        await asyncio.sleep(1.0)
        errors = call.of_type("error")
        assert len(errors) == 7, errors
        assert all(e["error"]["message"] for e in errors)
        assert any("launch.rockets" in e["error"]["message"] for e in errors)
        assert any("vad_threshold" in e["error"]["message"] for e in errors)
        # The session still works: a spoken question gets a spoken reply.
        audio, rate = speak("Hello, can you hear me?")
        start = time.monotonic()
        call.play(__import__("numpy").concatenate([silence(300), audio]), rate)
        done = await call.wait_for("response.done", timeout=60, after=start)
        assert done["response"]["status"] == "completed" and done["response"]["output_text"]
    finally:
        await call.close()
    await settle(server)


async def test_client_that_vanishes_mid_reply_is_cleaned_up(server: str) -> None:
    before = healthz(server)
    proc = subprocess.Popen([sys.executable, "-m", "tests.vanishing_client", server],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
        assert "REPLYING" in line, line
        assert healthz(server)["sessions"] == 1
        proc.send_signal(signal.SIGKILL)  # no BYE, no DTLS close: the peer is simply gone
    finally:
        proc.kill()
        proc.wait()
    after = await settle(server, timeout=20)
    assert after["tasks"] <= before["tasks"] + 2, (before, after)
    # ...and the next caller is served normally.
    call = ParleyCall(server)
    await call.connect()
    await call.close()
    await settle(server)
