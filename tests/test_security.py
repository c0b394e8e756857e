"""Isolation without a key, and the abuse limits: what a second local client, a forger or a flood gets.

Real servers (echo stack: real Silero VAD, canned tone reply), real aiortc calls, real aiohttp clients from two
loopback addresses, Debian's SIPp calling from 127.0.0.2, and signatures Twilio's own helper library computed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from benchmarks.client import ParleyCall
from benchmarks.sipp_media import free_udp_port
from realtime.transports import twilio_signature
from tests.conftest import healthz, run_server, speak, words

pytestmark = pytest.mark.timeout(120)
needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian package sip-tester)")

TWILIO_TOKEN = "twilio-test-auth-token-0123456789"
WEBHOOK = "https://voice.example.com/telephony/twilio/twiml"
# A webhook as Twilio posts it, and the signatures twilio-python 9's RequestValidator.compute_signature gives it
# (over WEBHOOK, and over WEBHOOK with the explicit :443 that Twilio sometimes signs).
TWILIO_PARAMS = {"CallSid": "CA0123456789abcdef0123456789abcdef", "From": "+15550100", "To": "+15550199",
                 "AccountSid": "AC00000000000000000000000000000000"}
TWILIO_SIGNATURE = "c2x6uhNVSkI+XmnecGTNiWLVNRI="
TWILIO_SIGNATURE_WITH_PORT = "ErX0RhHd769PtrZB9yMG1tgqmjA="
SIP_USER, SIP_PASSWORD = "alice", "correct-horse-battery"
SCENARIOS = Path(__file__).parent / "sip"


class Open:
    def __init__(self, url: str, sip_port: int) -> None:
        self.url, self.sip_port = url, sip_port


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Open]:
    sip_port = free_udp_port()
    config = f"""
[server]
header_timeout_s = 2
ws_idle_timeout_s = 2
[models]
stack = "echo"
[telephony]
twilio = true
twilio_auth_token = "{TWILIO_TOKEN}"
twilio_webhook_url = "{WEBHOOK}"
sip = true
sip_host = "127.0.0.1"
sip_port = {sip_port}
sip_allowed_sources = ["127.0.0.1/32"]
sip_digest_user = "{SIP_USER}"
sip_digest_password = "{SIP_PASSWORD}"
rtp_port_min = 32000
rtp_port_max = 32999
"""
    with run_server(tmp_path_factory.mktemp("open"), config, ready_timeout=90) as url:
        yield Open(url, sip_port)


async def _tap(http: aiohttp.ClientSession, url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as r:
        return r.status


def test_a_second_local_client_learns_no_session_id_or_word_of_a_call(open_server: Open) -> None:
    url = open_server.url

    async def read_both(http: aiohttp.ClientSession) -> tuple[str, str]:
        async with http.get(f"{url}/stats") as r:
            assert r.status == 200
            stats_text = await r.text()
        async with http.get(f"{url}/metrics") as r:
            return stats_text, await r.text()

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            # Words the pages hold with no call at all (metric help texts say "speech"): the baseline.
            baseline = {w for text in await read_both(http) for w in words(text)}
        caller = ParleyCall(url)
        await caller.connect()
        try:
            assert caller.session_id and caller.events_token.startswith("evt_")
            tap_url = f"{url}/sessions/{caller.session_id}/events"
            async with aiohttp.ClientSession() as http:
                # The caller's own token opens its tap, which then carries the call's events.
                tap = await http.ws_connect(tap_url, headers={"Authorization": f"Bearer {caller.events_token}"})
                speech, rate = speak("Hello, is anybody there?")
                await caller.play_and_wait(speech, rate)
                await caller.wait_for("response.done", timeout=30)
                seen = []
                async with asyncio.timeout(10):
                    while "response.done" not in seen:
                        seen.append((await tap.receive_json())["type"])
                await tap.close()
            said = {w for e in caller.of_type("conversation.item.input_audio_transcription.completed")
                    for w in words(e["transcript"])}
            said |= {w for e in caller.of_type("response.audio_transcript.delta") for w in words(e["delta"])}
            said = {w for w in said if len(w) > 3}

            # A second local client, from another loopback address, with no credential.
            conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=conn) as other:
                stats_text, metrics_text = await read_both(other)
                stats = json.loads(stats_text)
                assert stats["live_sessions"] == 1 and "live" not in stats and "recent" not in stats
                for text in (stats_text, metrics_text):
                    assert caller.session_id not in text and "sess_" not in text and caller.events_token not in text
                    assert not (set(words(text)) - baseline) & said, said
                # Knowing the id is not enough: no token, a made-up one, or the API-key route all get 401.
                assert await _tap(other, tap_url, None) == 401
                assert await _tap(other, tap_url, "evt_" + "x" * 32) == 401
                assert await _tap(other, f"{tap_url}?token=wrong", None) == 401
                assert await _tap(other, f"{url}/sessions/sess_1_{'0' * 32}/events", None) == 401
        finally:
            await caller.close()

    asyncio.run(main())


def test_twilio_webhook_needs_a_signature_twilio_made(open_server: Open) -> None:
    # The same figures from Parley's own implementation, so a mismatch points at the algorithm, not the server.
    assert twilio_signature.is_valid(TWILIO_TOKEN, WEBHOOK, TWILIO_PARAMS.items(), TWILIO_SIGNATURE)
    assert twilio_signature.is_valid(TWILIO_TOKEN, WEBHOOK, TWILIO_PARAMS.items(), TWILIO_SIGNATURE_WITH_PORT)
    twiml = f"{open_server.url}/telephony/twilio/twiml"

    async def post(params: dict[str, str], signature: str | None) -> int:
        headers = {"X-Twilio-Signature": signature} if signature else {}
        async with aiohttp.ClientSession() as http, http.post(twiml, data=params, headers=headers) as r:
            body = await r.text()
            assert (r.status == 200) == ("<Stream" in body), body
            return r.status

    async def main() -> None:
        assert await post(TWILIO_PARAMS, TWILIO_SIGNATURE) == 200
        assert await post(TWILIO_PARAMS, TWILIO_SIGNATURE_WITH_PORT) == 200
        assert await post(TWILIO_PARAMS, None) == 403
        assert await post(TWILIO_PARAMS, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=") == 403
        assert await post({**TWILIO_PARAMS, "To": "+15550666"}, TWILIO_SIGNATURE) == 403  # tampered

    asyncio.run(main())


def test_a_websocket_that_never_starts_is_closed(open_server: Open) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{open_server.url}/telephony/twilio")
            t0 = time.monotonic()
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert 1.5 <= time.monotonic() - t0 <= 5  # ws_idle_timeout_s = 2
            await ws.close()

    asyncio.run(main())


def test_slow_request_headers_are_cut_off(open_server: Open) -> None:
    host, port = open_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        t0 = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed_after = None
        for _ in range(20):  # one header byte every 0.3 s: never a whole request
            try:
                slow.sendall(b"X")
                slow.settimeout(0.3)
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
    assert closed_after is not None and closed_after <= 4, closed_after  # header_timeout_s = 2
    with socket.create_connection((host, int(port)), timeout=5) as ok:  # a prompt client is still served
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.recv(64).startswith(b"HTTP/1.1 200")


def _sipp(server: Open, scenario: str, source: str, tmp: Path, *args: str, status: str = "") -> int:
    text = (SCENARIOS / scenario).read_text().replace("@STATUS@", status)
    path = tmp / scenario
    path.write_text(text)
    cmd = ["sipp", f"127.0.0.1:{server.sip_port}", "-sf", str(path), "-m", "1", "-i", source,
           "-p", str(free_udp_port()), "-mp", str(free_udp_port()), "-s", "15550100", "-nostdin",
           "-timeout", "20", "-timeout_error", *args]
    with (tmp / f"{scenario}.log").open("w") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=60, check=False).returncode


@needs_sipp
def test_sip_from_outside_the_allowed_sources_gets_403(open_server: Open, tmp_path: Path) -> None:
    # sip_allowed_sources = 127.0.0.1/32: SIPp on 127.0.0.2 is a stranger, even with the right password.
    rc = _sipp(open_server, "refused.xml", "127.0.0.2", tmp_path, "-au", SIP_USER, "-ap", SIP_PASSWORD,
               status="403")
    assert rc == 0, (tmp_path / "refused.xml.log").read_text()[-2000:]
    # Any request from there gets 403, a broken one nothing at all, and the listener carries on.
    head = (f"OPTIONS sip:parley@127.0.0.1:{open_server.sip_port} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bKstranger\r\nFrom: <sip:x@127.0.0.2>;tag=1\r\n"
            "To: <sip:parley@127.0.0.1>\r\nCall-ID: stranger-1\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        stranger.settimeout(2)
        stranger.sendto((head + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
                        ("127.0.0.1", open_server.sip_port))
        assert stranger.recv(2000).startswith(b"SIP/2.0 403 Forbidden")
        stranger.sendto((head + "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", open_server.sip_port))
        stranger.settimeout(0.5)
        with pytest.raises(TimeoutError):
            stranger.recv(2000)
    assert healthz(open_server.url)["status"] == "ok"


@needs_sipp
def test_sip_invites_need_the_digest_password(open_server: Open, tmp_path: Path) -> None:
    assert _sipp(open_server, "refused.xml", "127.0.0.1", tmp_path, status="401") == 0  # no credentials
    rc = _sipp(open_server, "digest.xml", "127.0.0.1", tmp_path, "-au", SIP_USER, "-ap", SIP_PASSWORD)
    assert rc == 0, (tmp_path / "digest.xml.log").read_text()[-2000:]
    wrong = _sipp(open_server, "digest.xml", "127.0.0.1", tmp_path, "-au", SIP_USER, "-ap", "wrong")
    assert wrong != 0  # the second INVITE is challenged again, never answered 200


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = '[server]\nrate_limit_burst = 3\nrate_limit_per_minute = 30\n[models]\nstack = "echo"\n'
    with run_server(tmp_path_factory.mktemp("limited"), config, ready_timeout=90) as url:
        yield url


def test_offers_and_websocket_connects_are_rate_limited_per_address(limited: str) -> None:
    offer = {"sdp": "v=0\r\n", "type": "offer"}

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):
                async with http.post(f"{limited}/offer", json=offer) as r:
                    statuses.append(r.status)
            assert statuses == [400, 400, 400]  # through the limit, refused for their SDP
            async with http.post(f"{limited}/offer", json=offer) as r:
                assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 2
                assert (await r.json())["error"]["type"] == "rate_limited"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{limited}/sessions/sess_x/events")
            assert refused.value.status == 429
            async with http.get(f"{limited}/healthz") as r:
                assert r.status == 200  # probes and reads are not limited
        # Another address has its own allowance.
        conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=conn) as other, other.post(f"{limited}/offer", json=offer) as r:
            assert r.status == 400
        await asyncio.sleep(2.1)  # 30 a minute: one more after two seconds
        async with aiohttp.ClientSession() as http, http.post(f"{limited}/offer", json=offer) as r:
            assert r.status == 400

    asyncio.run(main())
