"""SIP/RTP: Debian's SIPp calls Parley on loopback, streams recorded speech as G.711 RTP and hangs up.

SIPp replays a pcap made at test time from hibari-tts speech (µ-law or A-law, 20 ms packets, RFC 4733 key
presses after it). Its SDP names this test's own UDP socket as the caller's media address, so the reply RTP is
recorded where a phone would play it. Broken and unwelcome requests come from a plain UDP socket, which can send
what no SIP stack would.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from benchmarks import sipp_media
from benchmarks.sipp_media import RtpCapture, free_udp_port
from realtime.transports import g711, rtp, sdp
from tests.conftest import healthz, run_server, speak, words

needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian package sip-tester)")

SCENARIO = Path(__file__).parent / "sip" / "call.xml"
NUMBER = "15550100"


@dataclass
class SipServer:
    url: str
    sip_port: int


@contextlib.contextmanager
def sip_server(tmp_path: Path, extra: str, stack: str = "embedded") -> Iterator[SipServer]:
    port = free_udp_port()
    config = f"""
[models]
stack = "{stack}"
[telephony]
sip = true
sip_host = "127.0.0.1"
sip_port = {port}
rtp_port_min = 31000
rtp_port_max = 31999
{extra}
"""
    with run_server(tmp_path, config) as url:
        yield SipServer(url, port)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipServer]:
    extra = (f'[[telephony.numbers]]\nnumber = "+{NUMBER}"\n'
             'session = { end_of_turn_ms = 900, turn_detection = "silence" }\n')
    with sip_server(tmp_path_factory.mktemp("sip"), "[server]\nmax_sessions = 2\n" + extra) as server:
        yield server


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipServer]:
    extra = "media_timeout_ms = 2000\n[server]\nmax_sessions = 1\n"
    with sip_server(tmp_path_factory.mktemp("sip-echo"), extra, stack="echo") as server:
        yield server


# --- the phone side: SIPp, a capture socket and the event tap ------------------------------------------------


@dataclass
class SippCall:
    server: SipServer
    call_id: str
    capture: RtpCapture
    process: asyncio.subprocess.Process | None = None
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sip_port: int = 0
    session_id: str = ""
    clock_origin: float = 0.0
    started: float = 0.0
    log: Path | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    async def wait_for(self, kind: str, where: Any = None, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.of_type(kind) if where is None or where(e)]
            if found:
                return found[0]
            seen = [e["type"] for _, e in self.events[-10:]]
            assert time.monotonic() < deadline, f"no {kind} in {timeout:.0f} s; last events {seen}"
            await asyncio.sleep(0.05)

    def hang_up(self) -> None:
        """Tell SIPp the caller heard enough: an INFO on the call's Call-ID ends its wait, then it sends BYE."""
        info = (f"INFO sip:sipp@127.0.0.1:{self.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{secrets.token_hex(6)}\r\n"
                f"From: <sip:test@127.0.0.1>;tag=t\r\nTo: <sip:sipp@127.0.0.1>\r\nCall-ID: {self.call_id}\r\n"
                "CSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(info.encode(), ("127.0.0.1", self.sip_port))

    def stream(self) -> sipp_media.ReplyStream:
        assert len(self.capture.streams) == 1, self.capture.streams.keys()
        return next(iter(self.capture.streams.values()))


async def place_call(server: SipServer, tmp_path: Path, speech: np.ndarray, rate: int, codec: g711.Codec,
                     offer: str, digits: str = "", hold_ms: int = 120000) -> SippCall:
    """Start SIPp calling NUMBER; returns once Parley's session for the call is found and tapped."""
    tag = secrets.token_hex(4)
    packets = sipp_media.rtp_packets(sipp_media.to_8k(speech, rate), codec, digits, tail_ms=hold_ms)
    pcap = sipp_media.write_pcap(tmp_path / f"caller-{tag}.pcap", packets)
    scenario = tmp_path / f"call-{tag}.xml"
    text = SCENARIO.read_text().replace("@PCAP@", str(pcap)).replace("@CODECS@", offer)
    scenario.write_text(text.replace("@HOLD_MS@", str(hold_ms)))
    loop = asyncio.get_running_loop()
    capture_port = free_udp_port()
    _, capture = await loop.create_datagram_endpoint(lambda: RtpCapture(codec), local_addr=("127.0.0.1", capture_port))
    call = SippCall(server, f"{tag}-1", capture, sip_port=free_udp_port(), log=tmp_path / f"sipp-{tag}.log")
    call.started = time.monotonic()
    call.process = await asyncio.create_subprocess_exec(
        "sipp", f"127.0.0.1:{server.sip_port}", "-sf", str(scenario), "-m", "1", "-i", "127.0.0.1",
        "-p", str(call.sip_port), "-mp", str(free_udp_port()), "-key", "capture_port", str(capture_port),
        "-s", f"+{NUMBER}", "-cid_str", f"{tag}-%u", "-nostdin", "-timeout", "60",
        "-timeout_error", "-trace_err", "-error_file", str(tmp_path / f"sipp-{tag}.err"),
        stdout=call.log.open("w"), stderr=asyncio.subprocess.STDOUT,
    )
    await tap(call)
    return call


async def tap(call: SippCall, timeout: float = 15.0) -> None:
    async def collect() -> None:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + timeout
            while True:
                async with http.get(f"{call.server.url}/telephony/calls/{call.call_id}") as r:
                    if r.status == 200:
                        found = await r.json()
                        break
                assert time.monotonic() < deadline, f"no session for SIP call {call.call_id}"
                await asyncio.sleep(0.02)
            call.session_id = found["session_id"]
            call.clock_origin = found["clock"]["monotonic_origin_s"]
            tap_url = f"{call.server.url}/sessions/{call.session_id}/events?token={found['events_token']}"
            async with http.ws_connect(tap_url) as ws:
                ready.set()
                async for msg in ws:
                    call.events.append((time.monotonic(), msg.json()))

    ready = asyncio.Event()
    task = asyncio.create_task(collect())
    done, _ = await asyncio.wait([task, asyncio.create_task(ready.wait())], timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()


async def inject_rtp(call: SippCall, speech8k: np.ndarray, timeout: float = 10.0) -> int:
    """Send `speech8k` as PCMU RTP, paced at 20 ms, from a fresh port to the call's RTP port; returns packets sent."""
    deadline = time.monotonic() + timeout
    while not call.capture.streams:  # Parley's first packet names its RTP port
        assert time.monotonic() < deadline, "no RTP from Parley"
        await asyncio.sleep(0.01)
    parley_rtp = next(iter(call.capture.streams))
    packets = sipp_media.rtp_packets(speech8k, "PCMU", lead_ms=0, tail_ms=200)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        start = time.monotonic()
        for at, packet in packets:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            stranger.sendto(rtp.HEADER.pack(*rtp.HEADER.unpack_from(packet)[:4], 0xBAD5EED) + packet[rtp.HEADER.size:],
                            parley_rtp)
    return len(packets)


async def finish(call: SippCall, timeout: float = 90.0) -> int:
    """SIPp's exit code once it hung up (0: answered, media played, BYE answered 200)."""
    assert call.process is not None
    code = await asyncio.wait_for(call.process.wait(), timeout)
    await asyncio.sleep(0.3)  # the last RTP packets and events
    return code


async def sessions_drop_to_zero(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (live := healthz(url)["sessions"]) != 0:
        assert time.monotonic() < deadline, f"{live} sessions still open"
        await asyncio.sleep(0.1)


# --- calls ---------------------------------------------------------------------------------------------------


@needs_sipp
@pytest.mark.models
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sipp_call_holds_a_turn_with_dtmf(embedded: SipServer, tmp_path: Path) -> None:
    speech, rate = speak("What is the capital of France?")
    call = await place_call(embedded, tmp_path, speech, rate, "PCMU", offer="0 8", digits="7#")
    # A stranger on the same host streams its own speech at the call's RTP port from another port, from the
    # moment that port is known: none of it may reach the session.
    injected, injected_rate = speak("Purple elephants are dancing on the roof tonight.")
    injector = asyncio.create_task(inject_rtp(call, sipp_media.to_8k(injected, injected_rate)))
    await call.wait_for("response.done", where=lambda e: e["response"]["status"] == "completed")
    sent = await injector
    await asyncio.sleep(1.0)  # the key presses follow the speech in the caller's stream
    call.hang_up()
    assert await finish(call) == 0, call.log.read_text()[-2000:] if call.log else ""

    done = [e for e in call.of_type("response.done") if e["response"]["status"] == "completed"]
    heard = call.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert {"capital", "france"} <= set(words(heard)), heard
    assert sent > 100
    every_word = {w for e in call.of_type("conversation.item.input_audio_transcription.completed")
                  for w in words(e["transcript"])}
    assert not every_word & {"purple", "elephants", "dancing", "roof"}, every_word
    assert len(call.of_type("input_audio_buffer.speech_started")) == 1  # the caller's one question
    metrics = done[0]["response"]["metrics"]
    assert metrics["end_of_turn_ms"] == 900  # the dialled number's own settings
    assert [e["digit"] for e in call.of_type("input_audio_buffer.dtmf")] == ["7", "#"]

    # Reply RTP at the phone: PCMU, 20 ms packets in sequence, speech-loud, after the caller stopped talking.
    stream = call.stream()
    assert stream.payload_types == {0} and stream.sizes == {160}
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(stream.sequences, stream.sequences[1:], strict=False))
    speech_end = call.clock_origin + metrics["speech_end_ms"] / 1000.0
    onset = stream.onset_after(speech_end)
    assert onset is not None, "no reply audio reached the phone"
    assert stream.speech_ms() > 500
    print(f"sip: caller speech end -> first reply audio at the phone {1000 * (onset - speech_end):.0f} ms "
          f"(server-side metric {metrics['speech_end_to_first_audio_ms']} ms)")
    assert call.of_type("session.summary")[0]["summary"]["reason"] == "hangup"
    await sessions_drop_to_zero(embedded.url)


@needs_sipp
@pytest.mark.timeout(120)
async def test_pcma_call_ignores_rtp_from_an_unknown_source(echo: SipServer, tmp_path: Path) -> None:
    speech, rate = speak("Hello, is anybody there?")
    call = await place_call(echo, tmp_path, speech, rate, "PCMA", offer="8", digits="1")
    # Once Parley's first packet arrives, its source is Parley's RTP port: a stranger aims key presses at it.
    deadline = time.monotonic() + 10
    while not call.capture.streams:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    parley_rtp = next(iter(call.capture.streams))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        for n in range(40):
            await asyncio.sleep(0.02)
            event = rtp.HEADER.pack(0x80, sipp_media.DTMF_PT, 50000 + n, 123456, 0xBAD) + bytes([9, 0x80, 0, 160])
            stranger.sendto(event, parley_rtp)
    await call.wait_for("response.done", where=lambda e: e["response"]["status"] == "completed", timeout=30)
    await call.wait_for("input_audio_buffer.dtmf", timeout=10)
    await asyncio.sleep(1.5)  # the rest of the tone
    call.hang_up()
    assert await finish(call) == 0
    assert [e["digit"] for e in call.of_type("input_audio_buffer.dtmf")] == ["1"]
    assert any(e["response"]["status"] == "completed" for e in call.of_type("response.done"))
    stream = call.stream()
    assert stream.payload_types == {8} and stream.speech_ms() >= 1000  # the echo stack's 1.2 s tone, in A-law
    await sessions_drop_to_zero(echo.url)


# --- raw SIP from a plain socket ---------------------------------------------------------------------------------


class RawUac:
    """A UDP socket that speaks SIP by hand: for requests no well-behaved stack would send."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where Parley may send RTP
        self.media.bind(("127.0.0.1", 0))
        self.last_body = ""

    def request(self, method: str, call_id: str, body: str = "", cseq: int = 1, to_tag: str = "",
                content_type: str = "application/sdp", drop: tuple[str, ...] = ()) -> None:
        headers = {
            "Via": f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)}",
            "From": f"<sip:tester@127.0.0.1:{self.port}>;tag=uac{call_id}",
            "To": f"<sip:{NUMBER}@127.0.0.1:{self.server.sip_port}>" + (f";tag={to_tag}" if to_tag else ""),
            "Call-ID": call_id, "CSeq": f"{cseq} {method}", "Contact": f"<sip:tester@127.0.0.1:{self.port}>",
            "Max-Forwards": "70",
        }
        if body:
            headers["Content-Type"] = content_type
        lines = [f"{method} sip:{NUMBER}@127.0.0.1:{self.server.sip_port} SIP/2.0"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k not in drop]
        data = ("\r\n".join([*lines, f"Content-Length: {len(body.encode())}", "", ""]) + body).encode()
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.server.sip_port))

    def receive(self) -> tuple[int, dict[str, str], str]:
        """The next message: (status, or 0 for a request; headers by lower-case name; the start line)."""
        data, _ = self.sock.recvfrom(65535)
        text, _, self.last_body = data.decode().partition("\r\n\r\n")
        head = text.split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(head[0].split()[1]) if head[0].startswith("SIP/2.0") else 0
        return status, headers, head[0]

    def final(self) -> tuple[int, dict[str, str]]:
        while True:
            status, headers, _ = self.receive()
            if status >= 200:
                return status, headers

    def offer(self, formats: str = "0", proto: str = "RTP/AVP", extra: str = "") -> str:
        port = self.media.getsockname()[1]
        return (f"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {port} {proto} {formats}\r\n{extra}")

    def close(self) -> None:
        self.sock.close()
        self.media.close()


BAD_INVITES = [
    ("G.729 only", {"body": "offer:18", "extra": "a=rtpmap:18 G729/8000\r\n"}, 488, "no allowed codec"),
    ("SRTP only", {"body": "offer:0", "proto": "RTP/SAVP"}, 488, "SRTP"),
    ("garbage SDP", {"body": "this is not SDP at all"}, 488, "v="),
    ("port out of range", {"body": "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 99999 RTP/AVP 0\r\n"}, 488, "port"),
    ("no SDP", {"body": ""}, 488, "no SDP offer"),
    ("not SDP", {"body": "hello", "content_type": "text/plain"}, 488, "text/plain"),
]


@pytest.mark.parametrize(("case", "status", "warning"), [(c, s, w) for _, c, s, w in BAD_INVITES],
                         ids=[n for n, _, _, _ in BAD_INVITES])
async def test_unacceptable_offers_get_488_with_a_reason(echo: SipServer, case: dict, status: int,
                                                          warning: str) -> None:
    uac = RawUac(echo)
    try:
        body = case["body"]
        if body.startswith("offer:"):
            body = uac.offer(body.removeprefix("offer:"), case.get("proto", "RTP/AVP"), case.get("extra", ""))
        uac.request("INVITE", f"bad-{secrets.token_hex(3)}", body, content_type=case.get("content_type",
                                                                                          "application/sdp"))
        got, headers = uac.final()
        assert got == status
        assert warning in headers.get("warning", ""), headers
        assert "tag=" in headers["to"]
    finally:
        uac.close()
    assert healthz(echo.url)["sessions"] == 0


async def test_malformed_and_unexpected_requests_get_sip_errors(echo: SipServer) -> None:
    uac = RawUac(echo)
    try:
        uac.request("OPTIONS", "opt-1")
        status, headers = uac.final()
        assert status == 200 and "INVITE" in headers["allow"]
        uac.request("INVITE", "", uac.offer(), drop=("Call-ID",))
        assert uac.final()[0] == 400
        uac.request("INVITE", "bad-cseq", uac.offer(), cseq=-1)
        assert uac.final()[0] == 400
        uac.send_raw(b"\x00\xffnot sip at all\r\n\r\n")
        uac.send_raw(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\nbroken header\r\n\r\n")
        assert uac.final()[0] == 400
        uac.request("BYE", "no-such-call", to_tag="abc")
        assert uac.final()[0] == 481
        uac.request("CANCEL", "no-such-call")
        assert uac.final()[0] == 481
        uac.request("REGISTER", "reg-1")
        status, headers = uac.final()
        assert status == 405 and "INVITE" in headers["allow"]
        # Still serving: a proper call is answered, then hung up.
        await answered_then_hung_up(uac, "after-garbage")
    finally:
        uac.close()
    await sessions_drop_to_zero(echo.url)


async def answered_then_hung_up(uac: RawUac, call_id: str) -> None:
    uac.request("INVITE", call_id, uac.offer("8 0"))
    status, headers = uac.final()
    assert status == 200 and "a=rtpmap:8 PCMA/8000" in uac.last_body  # the caller's first choice
    tag = headers["to"].split("tag=")[1]
    uac.request("ACK", call_id, to_tag=tag)
    uac.request("BYE", call_id, cseq=2, to_tag=tag)
    assert uac.final()[0] == 200


async def test_busy_at_capacity_and_hang_up_when_media_stops(echo: SipServer) -> None:
    first, second = RawUac(echo), RawUac(echo)
    try:
        first.request("INVITE", "busy-1", first.offer())
        status, headers = first.final()
        assert status == 200
        parley_tag = headers["to"].split("tag=")[1]
        first.request("ACK", "busy-1", to_tag=parley_tag)
        second.request("INVITE", "busy-2", second.offer())
        status, headers = second.final()
        assert status == 486 and headers.get("retry-after")
        # The first caller sends no RTP at all: after media_timeout_ms Parley hangs up with a BYE of its own.
        t0 = time.monotonic()
        first.sock.settimeout(8)
        status, headers, start = first.receive()
        while status != 0:  # 200 OK retransmissions may still be in flight
            status, headers, start = first.receive()
        assert start.startswith("BYE ") and headers["call-id"] == "busy-1"
        assert f"tag={parley_tag}" in headers["from"] and "tag=uacbusy-1" in headers["to"]
        assert 1.5 < time.monotonic() - t0 < 8
        reply = (f"SIP/2.0 200 OK\r\nVia: {headers['via']}\r\nFrom: {headers['from']}\r\nTo: {headers['to']}\r\n"
                 f"Call-ID: busy-1\r\nCSeq: {headers['cseq']}\r\nContent-Length: 0\r\n\r\n")
        first.send_raw(reply.encode())
    finally:
        first.close()
        second.close()
    await sessions_drop_to_zero(echo.url)


# --- the codec and protocol pieces on their own ------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "libav"), [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")])
def test_g711_matches_libavcodec(codec: g711.Codec, libav: str) -> None:
    """What the caller hears is what any G.711 phone would decode, within one quantization step."""
    decoder = av.CodecContext.create(libav, "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    reference = np.concatenate([f.to_ndarray().reshape(-1) for f in decoder.decode(av.Packet(bytes(range(256))))])
    assert np.array_equal(g711.decode(bytes(range(256)), codec), reference)
    pcm = np.arange(-32768, 32768, 3).astype(np.int16)
    roundtrip = g711.decode(g711.encode(pcm, codec), codec).astype(np.int32)
    step = np.abs(np.diff(np.unique(reference.astype(np.int32))))
    assert np.max(np.abs(roundtrip - pcm)) <= step.max()  # never more than the widest quantization step
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)  # a speech-level tone: G.711's ~38 dB SNR
    decoded = g711.decode(g711.encode(tone.astype(np.float32), codec), codec) / 32767.0
    snr = 10 * np.log10(np.sum(tone**2) / np.sum((decoded - tone) ** 2))
    assert snr > 33, snr
    assert g711.encode(np.zeros(160, np.float32), codec) == bytes([g711.SILENCE_BYTE[codec]]) * 160


def test_sdp_answer_follows_the_callers_preference_and_refuses_the_rest() -> None:
    offer = ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
             "m=audio 4000 RTP/AVP 18 8 0 96\r\na=rtpmap:18 G729/8000\r\na=rtpmap:96 telephone-event/8000\r\n"
             "m=video 4002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n")
    negotiated = sdp.negotiate(sdp.parse(offer), ["PCMU", "PCMA"])
    assert (negotiated.codec, negotiated.payload_type, negotiated.dtmf_payload_type) == ("PCMA", 8, 96)
    assert negotiated.remote == ("192.0.2.1", 4000)
    answer = sdp.answer(negotiated, "198.51.100.7", 20000, 1)
    assert "m=audio 20000 RTP/AVP 8 96\r\n" in answer and "m=video 0 RTP/AVP 97\r\n" in answer
    with pytest.raises(sdp.NotAcceptable, match="no allowed codec"):
        sdp.negotiate(sdp.parse(offer.replace(" 8 0 96", " 96")), ["PCMU", "PCMA"])


def test_one_key_press_is_one_digit_even_with_retransmitted_ends() -> None:
    receiver = rtp.DtmfReceiver()
    digits = []
    for timestamp, event in ((1000, 5), (2000, 11)):
        for n in range(1, 6):
            flags = 0x80 if n == 5 else 0
            for _ in range(3 if n == 5 else 1):
                packet = rtp.RtpPacket(101, n, timestamp, 1, n == 1, bytes([event, flags | 10, 0, n * 160 % 256]))
                digits += receiver.push(packet)
    assert [d.digit for d in digits] == ["5", "#"]


async def test_server_shutdown_hangs_up_calls_with_bye(tmp_path: Path) -> None:
    # SIGTERM drains first (realtime/drain.py): the call may go on for drain_timeout_s, then it is hung up.
    with sip_server(tmp_path, "[server]\ndrain_timeout_s = 1\n", stack="echo") as server:
        uac = RawUac(server)
        uac.request("INVITE", "shutdown-1", uac.offer())
        status, headers = uac.final()
        assert status == 200
        uac.request("ACK", "shutdown-1", to_tag=headers["to"].split("tag=")[1])
    # Leaving the block stopped the server (SIGTERM): the caller was sent a BYE rather than left in silence.
    try:
        status, headers, start = uac.receive()
        while status != 0:
            status, headers, start = uac.receive()
        assert start.startswith("BYE ") and headers["call-id"] == "shutdown-1"
    finally:
        uac.close()
