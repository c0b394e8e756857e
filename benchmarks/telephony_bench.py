"""Phone-path figures for a running Parley server (loopback only): reply latency and concurrent calls held.

    python -m benchmarks.telephony_bench latency --url http://127.0.0.1:8080 --path twilio --turns 5
    python -m benchmarks.telephony_bench latency --url http://127.0.0.1:8080 --path sip --sip-port 5060 --turns 5
    python -m benchmarks.telephony_bench capacity --url http://127.0.0.1:8080 --path sip --sip-port 5060 --calls 10 20
    python -m benchmarks.telephony_bench capacity --url http://127.0.0.1:8080 --path twilio --calls 10 20

Latency is caller speech end → first reply audio at the phone: for Twilio, from the last speech frame the caller
sent to the first loud `media` frame it received; for SIP (SIPp replays the questions on a fixed schedule), from
the speech end the server dated (loopback transit is ~0) to the first loud RTP packet at the caller's socket.
Capacity runs N simultaneous calls (SIPp, or Media Streams callers in this process; the server should run the
cheap echo stack) and reports, per N, how many were answered and got their reply, the reply audio's inter-arrival
gaps, the event loop's lag and the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import sipp_media
from benchmarks.sipp_media import RtpCapture, free_udp_port
from benchmarks.twilio_client import TwilioCall
from realtime.transports import g711

SCENARIO = Path(__file__).resolve().parent.parent / "tests" / "sip" / "call.xml"
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Can you name a fruit that is yellow?",
    "What is two plus three?",
    "Which animal says moo?",
    "What do bees make?",
]


@functools.cache
def _tts() -> Any:
    from hibari import Hibari

    return Hibari()


def synthesize(text: str) -> tuple[np.ndarray, int]:
    """hibari-tts speech (24 kHz) without its leading and trailing silence."""
    audio = np.asarray(_tts()(text, seed=0), np.float32)
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return (audio[loud[0] : loud[-1] + 1] if loud.size else audio), 24000


def stages(metrics: dict[str, Any]) -> dict[str, Any]:
    """Where a turn's time went, in ms after the user's speech ended."""
    end = metrics["speech_end_ms"]
    keys = ("commit_ms", "transcript_ready_ms", "lm_first_token_ms", "first_audio_ready_ms", "first_audio_out_ms")
    return {k.removesuffix("_ms"): None if metrics.get(k) is None or end is None else round(metrics[k] - end)
            for k in keys} | {"speculative": metrics.get("speculative")}


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values)), "max": round(max(values)),
            "min": round(min(values)), "all": [round(v) for v in values]}


# --- latency -----------------------------------------------------------------------------------------------------


async def twilio_latency(url: str, turns: int) -> dict[str, Any]:
    call = TwilioCall(url, keep_audio=False)
    await call.connect()
    out: list[float] = []
    server: list[float] = []
    breakdown: list[dict[str, Any]] = []
    try:
        for i in range(turns):
            speech, rate = synthesize(QUESTIONS[i % len(QUESTIONS)])
            asked = time.monotonic()
            call.play(np.concatenate([speech, np.zeros(rate // 5, np.float32)]), rate, marks={f"end{i}": speech.size})
            done = await call.wait_for("response.done", after=asked, timeout=120,
                                       where=lambda e: e["response"]["status"] == "completed")
            end = call.mark_times[f"end{i}"]
            onset = call.received.onset_after(end)
            if onset is not None:
                out.append((onset - end) * 1000)
            if done["response"]["metrics"]["speech_end_to_first_audio_ms"] is not None:
                server.append(done["response"]["metrics"]["speech_end_to_first_audio_ms"])
            breakdown.append(stages(done["response"]["metrics"]))
            await asyncio.sleep(1.0)
    finally:
        await call.close()
    return {"path": "twilio", "phone_side_ms": summary(out), "server_metric_ms": summary(server),
            "stages": breakdown}


def _scenario(workdir: Path, pcap: Path, hold_ms: int) -> Path:
    text = SCENARIO.read_text().replace("@PCAP@", str(pcap)).replace("@CODECS@", "0").replace("@HOLD_MS@",
                                                                                                 str(hold_ms))
    path = workdir / f"call-{secrets.token_hex(3)}.xml"
    path.write_text(text)
    return path


def _sipp(sip_port: int, scenario: Path, capture_port: int, calls: int, tag: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["sipp", f"127.0.0.1:{sip_port}", "-sf", str(scenario), "-m", str(calls), "-l", str(calls),
         "-r", str(calls), "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mp", str(free_udp_port()),
         "-key", "capture_port", str(capture_port), "-s", "15550100", "-cid_str", f"{tag}-%u", "-nostdin",
         "-timeout", "300", "-timeout_error", "-max_socket", "4096"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


def _get(url: str) -> Any:
    # The API key, when the server has one, also unlocks /stats' per-call detail (docs/SECURITY.md).
    key = os.environ.get("PARLEY_API_KEY", "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


async def sip_latency(url: str, sip_port: int, turns: int, turn_s: float) -> dict[str, Any]:
    """One SIPp call that asks `turns` questions, one every `turn_s` seconds."""
    speech = np.zeros(0, np.float32)
    for i in range(turns):
        q, rate = synthesize(QUESTIONS[i % len(QUESTIONS)])
        q8 = sipp_media.to_8k(q, rate)
        speech = np.concatenate([speech, q8, np.zeros(int(turn_s * g711.RATE) - q8.size, np.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pcap = sipp_media.write_pcap(work / "questions.pcap", sipp_media.rtp_packets(speech, "PCMU", tail_ms=5000))
        capture_port = free_udp_port()
        loop = asyncio.get_running_loop()
        transport, capture = await loop.create_datagram_endpoint(lambda: RtpCapture("PCMU"),
                                                                 local_addr=("127.0.0.1", capture_port))
        tag = secrets.token_hex(3)
        hold_ms = int((turns * turn_s + 4) * 1000)
        proc = _sipp(sip_port, _scenario(work, pcap, hold_ms), capture_port, 1, tag, work / "sipp.log")
        session_id, token, origin = await _find_session(url, f"{tag}-1")
        events = await _collect_events(url, session_id, token, timeout=hold_ms / 1000 + 30)
        await asyncio.to_thread(proc.wait, 60)
        transport.close()
    out, server, breakdown = [], [], []
    stream = next(iter(capture.streams.values())) if capture.streams else sipp_media.ReplyStream()
    for e in events:
        if e.get("type") != "response.done" or e["response"]["status"] != "completed":
            continue
        m = e["response"]["metrics"]
        end = origin + m["speech_end_ms"] / 1000.0
        onset = stream.onset_after(end)
        if onset is not None:
            out.append((onset - end) * 1000)
        if m["speech_end_to_first_audio_ms"] is not None:
            server.append(m["speech_end_to_first_audio_ms"])
        breakdown.append(stages(m))
    return {"path": "sip", "phone_side_ms": summary(out), "server_metric_ms": summary(server), "stages": breakdown}


async def _find_session(url: str, call_id: str, timeout: float = 20.0) -> tuple[str, str, float]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await asyncio.to_thread(_get, f"{url}/telephony/calls/{call_id}")
            return found["session_id"], found["events_token"], found["clock"]["monotonic_origin_s"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _collect_events(url: str, session_id: str, token: str, timeout: float) -> list[dict[str, Any]]:
    import aiohttp

    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/sessions/{session_id}/events",
                                                               headers={"Authorization": f"Bearer {token}"}) as ws:
        try:
            async with asyncio.timeout(timeout):
                async for msg in ws:
                    events.append(msg.json())
        except TimeoutError:
            pass
    return events


# --- capacity ----------------------------------------------------------------------------------------------------


async def sip_capacity(url: str, sip_port: int, calls: int, hold_s: float) -> dict[str, Any]:
    speech, rate = synthesize("Hello, I would like to check the status of my order please.")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        packets = sipp_media.rtp_packets(sipp_media.to_8k(speech, rate), "PCMU", tail_ms=int(hold_s * 1000) + 2000)
        pcap = sipp_media.write_pcap(work / "caller.pcap", packets)
        capture_port = free_udp_port()
        loop = asyncio.get_running_loop()
        transport, capture = await loop.create_datagram_endpoint(lambda: RtpCapture("PCMU"),
                                                                 local_addr=("127.0.0.1", capture_port))
        tag = secrets.token_hex(3)
        before = {s["session_id"] for s in _get(f"{url}/stats").get("recent", [])}
        cpu0 = _proc_cpu(_get(f"{url}/healthz")["pid"])
        t0 = time.monotonic()
        proc = _sipp(sip_port, _scenario(work, pcap, int(hold_s * 1000)), capture_port, calls, tag,
                     work / "sipp.log")
        peak, lag = 0, 0.0
        while proc.poll() is None:
            await asyncio.sleep(1.0)
            health = _get(f"{url}/healthz")
            peak = max(peak, health["sessions"])
            lag = max(lag, _loop_lag_window(url))
        elapsed = time.monotonic() - t0
        cpu = _proc_cpu(_get(f"{url}/healthz")["pid"]) - cpu0
        log = (work / "sipp.log").read_text()
        transport.close()
    # Per-call summaries need the API key (PARLEY_API_KEY here and on the server); without it v2v stays empty.
    recent = [s for s in _get(f"{url}/stats").get("recent", []) if s["session_id"] not in before]
    replied = sum(1 for s in capture.streams.values() if s.speech_ms() >= 500)
    gaps = [1000 * (b - a) for s in capture.streams.values() for a, b in zip(s.times, s.times[1:], strict=False)]
    v2v = [s["voice_to_voice_ms"]["p50"] for s in recent if s.get("voice_to_voice_ms", {}).get("p50") is not None]
    return {
        "calls": calls, "peak_sessions": peak, "sipp_successful": _sipp_count(log, "Successful call"),
        "sipp_failed": _sipp_count(log, "Failed call"), "streams": len(capture.streams), "got_reply": replied,
        "rtp_gap_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99), "max": _pct(gaps, 100)},
        "loop_lag_max_ms": round(lag, 1), "server_cpu_percent": round(100 * cpu / elapsed),
        "voice_to_voice_p50_ms": summary(v2v),
    }


async def twilio_capacity(url: str, calls: int, hold_s: float) -> dict[str, Any]:
    """N simultaneous Media Streams callers in this process (their own cost shares the machine with the server)."""
    speech, rate = synthesize("Hello, I would like to check the status of my order please.")
    clients = [TwilioCall(url, keep_audio=False) for _ in range(calls)]
    cpu0 = _proc_cpu(_get(f"{url}/healthz")["pid"])
    t0 = time.monotonic()
    results = await asyncio.gather(*(c.connect(tap=False) for c in clients), return_exceptions=True)
    connected = [c for c, r in zip(clients, results, strict=True) if not isinstance(r, BaseException)]
    for c in connected:
        c.play(speech, rate, marks={"end": speech.size})
    peak, lag = 0, 0.0
    while time.monotonic() - t0 < hold_s:
        await asyncio.sleep(1.0)
        peak = max(peak, _get(f"{url}/healthz")["sessions"])
        lag = max(lag, _loop_lag_window(url))
    cpu = _proc_cpu(_get(f"{url}/healthz")["pid"]) - cpu0
    elapsed = time.monotonic() - t0
    onsets = [c.received.onset_after(c.mark_times.get("end", 1e12)) for c in connected]
    latencies = [1000 * (o - c.mark_times["end"]) for c, o in zip(connected, onsets, strict=True) if o is not None]
    gaps = [1000 * (b - a) for c in connected for a, b in zip(c.received.times, c.received.times[1:], strict=False)
            if b - a < 0.5]  # within a stretch of reply audio: silence is not sent
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return {"calls": calls, "connected": len(connected), "peak_sessions": peak, "got_reply": len(latencies),
            "media_gap_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99), "max": _pct(gaps, 100)},
            "speech_end_to_reply_ms": summary(latencies), "loop_lag_max_ms": round(lag, 1),
            "server_cpu_percent": round(100 * cpu / elapsed)}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _sipp_count(log: str, label: str) -> int:
    lines = [line for line in log.splitlines() if line.strip().startswith(label)]
    return int(lines[-1].split("|")[2].strip()) if lines else -1


def _loop_lag_window(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("parley_event_loop_lag_max_ms"):
                return float(line.split()[-1])
    return 0.0


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["latency", "capacity"])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--path", choices=["twilio", "sip"], default="twilio")
    p.add_argument("--sip-port", type=int, default=5060)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--turn-s", type=float, default=12.0, help="SIP latency: seconds between questions")
    p.add_argument("--calls", type=int, nargs="+", default=[10])
    p.add_argument("--hold-s", type=float, default=12.0, help="capacity: how long each call stays up")
    args = p.parse_args()
    if args.what == "latency":
        coro = (twilio_latency(args.url, args.turns) if args.path == "twilio"
                else sip_latency(args.url, args.sip_port, args.turns, args.turn_s))
        print(json.dumps(asyncio.run(coro)))
    else:
        for n in args.calls:
            run = (sip_capacity(args.url, args.sip_port, n, args.hold_s) if args.path == "sip"
                   else twilio_capacity(args.url, n, args.hold_s))
            print(json.dumps(asyncio.run(run)), flush=True)
            time.sleep(3)


if __name__ == "__main__":
    main()
