"""Hours at capacity in minutes: calls arrive and hang up for `--duration`, and the server must end where it began.

    python -m benchmarks.soak --config configs/soak.toml --calls 24 --duration 1800 [--workers 2]

`--calls` call slots stay busy for the whole run; each slot places one call after another (20-60 s each, then a
short gap), of the kind `--mix` gives it:

- `webrtc`: a WebRTC caller plays corpus turns and waits for each reply, then hangs up;
- `barge`: a WebRTC caller talks over every reply 0.3-1 s after it starts;
- `vanish`: a WebRTC caller in its own process asks a question and is SIGKILLed mid-call (no hang-up, no DTLS
  close; the server must notice on its own);
- `sip`: SIPp places a G.711 call (INVITE, RTP, BYE), when the config enables SIP;
- `twilio`: a Media Streams caller, hanging up with `stop` or, every other call, just dropping the WebSocket.

Every `--sample-s` the server's processes are read: resident memory, open file descriptors and threads from
/proc; live sessions, peer connections and asyncio tasks from /healthz. At the end, once every call has ended and
`--settle-s` has passed, the leak check compares those counts with the idle server's before the first call. The
report (OUTDIR/soak.json, soak.md, soak.png) says RSS growth after `--warmup-s`, the leaks (must be 0), the
longest event-loop stall and what the calls saw (failures, late frames, reply latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import random
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import opus_mic, sipp_media
from benchmarks import server_process as sp
from benchmarks.client import RATE, ParleyCall
from benchmarks.conversation import CallRecord, play_scenario
from benchmarks.runinfo import git_commit, load_average, machine
from benchmarks.scenarios import STANDARD_CORPUS, Scenario, Turn, load_for_command, load_scenarios
from benchmarks.summary import percentiles
from benchmarks.turns import analyse_call, call_pacing

SIP_SCENARIO = Path(__file__).resolve().parent.parent / "tests" / "sip" / "call.xml"
KINDS = ("webrtc", "barge", "vanish", "sip", "twilio")
DEFAULT_MIX = "webrtc=14,barge=4,vanish=2,sip=2,twilio=2"
CALL_S = (20.0, 60.0)  # how long one call of a slot lasts, uniform (--call-s)
GAP_S = (0.5, 3.0)  # between one call of a slot and the next
CALLS_PER_CLIENT = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="start `server.py --config CONFIG` for the run")
    p.add_argument("--workers", type=int, help="server worker processes")
    p.add_argument("--calls", type=int, default=24, help="concurrent call slots (the capacity under test)")
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of calls")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"slot kinds and weights (default {DEFAULT_MIX})")
    p.add_argument("--warmup-s", type=float, default=300.0, help="RSS growth is measured from this point on")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples of the server")
    p.add_argument("--settle-s", type=float, default=30.0,
                   help="after the last call: how long the counts may take to return to idle (a vanished "
                        "caller is noticed after [webrtc] media_timeout_ms)")
    p.add_argument("--call-s", default=f"{CALL_S[0]:g},{CALL_S[1]:g}", metavar="MIN,MAX",
                   help="how long one call lasts, uniform between MIN and MAX seconds")
    p.add_argument("--scenarios", type=Path, default=STANDARD_CORPUS, help="speech the callers play")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        args.slots = slot_kinds(args.mix, args.calls)
        low, high = (float(x) for x in args.call_s.split(","))
    except ValueError as exc:
        p.error(str(exc))
    if not 0 < low <= high:
        p.error("--call-s: need 0 < MIN <= MAX")
    args.call_range = (low, high)
    return args


def slot_kinds(mix: str, calls: int) -> list[str]:
    """`webrtc=14,barge=4` over `calls` slots, by largest remainder; every kind named with weight > 0 gets one."""
    weights: dict[str, float] = {}
    for part in mix.split(","):
        kind, _, w = part.strip().partition("=")
        if kind not in KINDS:
            raise ValueError(f"--mix: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        try:
            weights[kind] = float(w or 1)
        except ValueError:
            raise ValueError(f"--mix: {part!r}: expected KIND=WEIGHT") from None
    weights = {k: w for k, w in weights.items() if w > 0}
    if not weights or calls < len(weights):
        raise ValueError(f"--calls {calls} cannot hold one slot of each kind in --mix {mix!r}")
    total = sum(weights.values())
    exact = {k: calls * w / total for k, w in weights.items()}
    counts = {k: max(1, math.floor(x)) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True):
        if sum(counts.values()) >= calls:
            break
        counts[k] += 1
    while sum(counts.values()) > calls:
        counts[max(counts, key=lambda k: counts[k])] -= 1
    return [k for k in KINDS for _ in range(counts.get(k, 0))]


# --- the server, sampled ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the first call
    rss_mib: float
    fds: int
    threads: int
    cpu_s: float
    sessions: int
    peer_connections: int
    tasks: int
    loop_lag_max_ms: float
    gc_collections: int = 0  # full collections after calls ended (realtime/reclaim.py), all workers
    gc_pause_max_ms: float = 0.0


def _proc_counts(pid: int) -> tuple[int, int]:
    """Open file descriptors and threads of one process (0, 0 once it is gone)."""
    try:
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    threads = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), 0)
    return fds, threads


def sample(url: str, server_pids: list[int], worker_pids: list[int], t0: float) -> Sample:
    rss, cpu, fds, threads = 0, 0.0, 0, 0
    for pid in server_pids:
        proc = sp.read_proc(pid)
        if proc is not None:
            rss += proc.rss_bytes
            cpu += proc.cpu_s
        f, th = _proc_counts(pid)
        fds += f
        threads += th
    health = sp.healthz_by_worker(url, worker_pids, tries=12)
    return Sample(
        t=round(time.monotonic() - t0, 1), rss_mib=round(rss / (1024 * 1024), 1), fds=fds, threads=threads,
        cpu_s=round(cpu, 2), sessions=sum(int(h.get("sessions", 0)) for h in health.values()),
        peer_connections=sum(int(h.get("peer_connections", 0)) for h in health.values()),
        tasks=sum(int(h.get("tasks", 0)) for h in health.values()),
        loop_lag_max_ms=max((float(h.get("event_loop_lag_max_ms", 0.0)) for h in health.values()), default=0.0),
        gc_collections=sum(int(h.get("gc", {}).get("collections", 0)) for h in health.values()),
        gc_pause_max_ms=max((float(h.get("gc", {}).get("max_pause_ms", 0.0)) for h in health.values()), default=0.0))


# --- WebRTC callers (child processes) -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What one kind of call saw over the run."""

    calls: int = 0
    failed: int = 0
    turns: int = 0
    failed_turns: int = 0
    frames: int = 0
    late_frames: int = 0
    barge_ins: int = 0
    v2v_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("calls", "failed", "turns", "failed_turns", "frames", "late_frames", "barge_ins"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.v2v_ms += other.v2v_ms
        self.errors = (self.errors + other.errors)[:10]

    def failure(self, error: str) -> None:
        self.failed += 1
        if len(self.errors) < 10:
            self.errors.append(error)

    def summary(self) -> dict[str, Any]:
        return {"calls": self.calls, "failed_calls": self.failed, "turns": self.turns,
                "failed_turns": self.failed_turns, "frames": self.frames, "late_frames": self.late_frames,
                "late_frame_ratio": round(self.late_frames / self.frames, 5) if self.frames else None,
                "barge_ins": self.barge_ins, "v2v_ms": percentiles(self.v2v_ms, (50, 95)),
                "errors": sorted(set(self.errors))}


def _webrtc_main(conn: Connection, url: str, kinds: list[str], seed: int, scenario_dir: str, end_at: float,
                 call_s: tuple[float, float]) -> None:
    import uvloop

    from realtime.transports import aiortc_tuning

    # The callers share the server's cores: they decode with the server's cheaper receive path (mono, no Task
    # a frame), so less of the machine goes to the load generator.
    aiortc_tuning.install()

    result = uvloop.run(_webrtc_slots(url, kinds, seed, load_scenarios(scenario_dir), end_at, call_s))
    conn.send(result)
    conn.close()


async def _webrtc_slots(url: str, kinds: list[str], seed: int, scenarios: list[Scenario], end_at: float,
                        call_s: tuple[float, float]) -> dict[str, dict[str, Any]]:
    turns = [t for s in scenarios for t in s.turns]
    for turn in turns:  # encoded once, before any call: encoding later would stall this loop's callers
        opus_mic.cached(turn.render().samples)
    tallies = {k: Tally() for k in set(kinds)}

    async def slot(k: int, kind: str) -> None:
        rng = random.Random(seed * 1000 + k)
        await asyncio.sleep(k * 0.5 + rng.uniform(0.0, 1.0))  # staggered, like callers arriving
        while time.monotonic() < end_at - call_s[0] / 2:
            until = min(end_at, time.monotonic() + rng.uniform(*call_s))
            first = rng.randrange(len(turns))
            rotated = tuple(turns[first:] + turns[:first]) * 4
            if kind == "barge":
                tallies[kind].add(await _barge_call(url, rotated, until, rng))
            else:
                tallies[kind].add(await _plain_call(url, Scenario(f"soak-{seed}-{k}", rotated), until))
            await asyncio.sleep(rng.uniform(*GAP_S))

    await asyncio.gather(*(slot(k, kind) for k, kind in enumerate(kinds)))
    return {k: t.summary() | {"v2v_raw": t.v2v_ms} for k, t in tallies.items()}


async def _plain_call(url: str, scenario: Scenario, until: float) -> Tally:
    tally = Tally(calls=1)
    record = CallRecord("soak", scenario.name, 0, {})
    call = ParleyCall(url, keep_audio=False, preencoded=True)
    await play_scenario(call, scenario, record, reply_timeout=15.0, until=until)
    if record.error:
        tally.failure(record.error)
    analysed = analyse_call(record)
    ok = [t for t in analysed if t.get("ok")]
    tally.turns, tally.failed_turns = len(analysed), len(analysed) - len(ok)
    tally.v2v_ms = [t["v2v_ms"] for t in ok]
    pace = call_pacing(record)
    tally.frames, tally.late_frames = int(pace["frames"]), int(pace["late"])
    return tally


async def _barge_call(url: str, turns: tuple[Turn, ...], until: float, rng: random.Random) -> Tally:
    """Talk over each reply: the server must stop it, take the new turn and answer that."""
    tally = Tally(calls=1)
    call = ParleyCall(url, keep_audio=False, preencoded=True)
    try:
        await call.connect(timeout=30.0)
        for turn in turns:
            if time.monotonic() >= until:
                break
            tally.turns += 1
            await asyncio.wait_for(call.play_and_wait(turn.render().samples, RATE), 30.0)
            spoke = time.monotonic()
            while call.received.onset_after(spoke) is None and time.monotonic() - spoke < 15.0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if call.received.onset_after(spoke) is None:
                tally.failed_turns += 1
                continue
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # the next turn starts while the reply is playing
        tally.barge_ins = sum(1 for e in call.of_type("response.done")
                              if e.get("response", {}).get("status") == "cancelled")
    except Exception as exc:  # a failed call is counted, never a crash of the run
        tally.failure(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(call.close(), 10.0)
    return tally


def _vanishing_main(url: str, scenario_dir: str, seed: int) -> None:
    """One call that asks a question and then waits to be killed."""
    import uvloop

    async def run() -> None:
        turns = [t for s in load_scenarios(scenario_dir) for t in s.turns]
        call = ParleyCall(url, keep_audio=False, preencoded=True)
        await call.connect(timeout=30.0)
        call.play(random.Random(seed).choice(turns).render().samples, RATE)
        await asyncio.sleep(3600)

    with contextlib.suppress(Exception):
        uvloop.run(run())


async def _vanish_slot(url: str, scenario_dir: str, k: int, end_at: float, seed: int, call_s: tuple[float, float]
                       ) -> Tally:
    tally = Tally()
    rng = random.Random(seed * 1000 + 500 + k)
    ctx = mp.get_context("spawn")
    await asyncio.sleep(k * 0.7 + rng.uniform(0.0, 1.0))
    while time.monotonic() < end_at - call_s[0] / 2:
        proc = ctx.Process(target=_vanishing_main, args=(url, scenario_dir, rng.randrange(1 << 30)), daemon=True)
        proc.start()
        await asyncio.sleep(min(rng.uniform(*call_s), max(1.0, end_at - time.monotonic())))
        if proc.exitcode is not None:
            tally.failure(f"the vanishing caller exited with {proc.exitcode} before it was killed")
        proc.kill()
        await asyncio.to_thread(proc.join, 10)
        tally.calls += 1
        await asyncio.sleep(rng.uniform(*GAP_S))
    return tally


# --- phone callers (this process) --------------------------------------------------------------------------------


async def _sip_slot(sip_port: int, pcap: Path, capture_port: int, k: int, end_at: float, seed: int, work: Path,
                    call_s: tuple[float, float]) -> Tally:
    tally = Tally()
    rng = random.Random(seed * 1000 + 700 + k)
    await asyncio.sleep(k * 0.9 + rng.uniform(0.0, 1.0))
    while time.monotonic() < end_at - call_s[0] / 2:
        hold_ms = int(1000 * min(rng.uniform(*call_s), max(1.0, end_at - time.monotonic())))
        scenario = work / f"call-{k}.xml"
        scenario.write_text(SIP_SCENARIO.read_text().replace("@PCAP@", str(pcap)).replace("@CODECS@", "0")
                            .replace("@HOLD_MS@", str(hold_ms)))
        log = work / f"sipp-{k}.log"
        cmd = ["sipp", f"127.0.0.1:{sip_port}", "-sf", str(scenario), "-m", "1", "-i", "127.0.0.1",
               "-p", str(sipp_media.free_udp_port()), "-mp", str(sipp_media.free_udp_port()),
               "-key", "capture_port", str(capture_port), "-s", "15550100",
               "-cid_str", f"soak{k}-{secrets.token_hex(4)}", "-nostdin", "-timeout", str(hold_ms // 1000 + 60),
               "-timeout_error"]
        with log.open("w") as out:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=subprocess.STDOUT)
            rc = await proc.wait()
        tally.calls += 1
        if rc != 0:
            tally.failure(f"sipp exited with {rc}: {log.read_text(errors='replace')[-300:].strip()}")
        await asyncio.sleep(rng.uniform(*GAP_S))
    return tally


async def _twilio_slot(url: str, speech: Any, rate: int, k: int, end_at: float, seed: int,
                       call_s: tuple[float, float]) -> Tally:
    from benchmarks.twilio_client import TwilioCall

    tally = Tally()
    rng = random.Random(seed * 1000 + 900 + k)
    await asyncio.sleep(k * 1.1 + rng.uniform(0.0, 1.0))
    while time.monotonic() < end_at - call_s[0] / 2:
        until = min(end_at, time.monotonic() + rng.uniform(*call_s))
        call = TwilioCall(url, keep_audio=False)
        tally.calls += 1
        try:
            await call.connect(tap=False)
            while time.monotonic() < until:
                call.play(speech, rate)
                tally.turns += 1
                await asyncio.sleep(min(until - time.monotonic(), speech.size / rate + 4.0))
            if not call.received.times:
                tally.failure("no reply audio")
        except Exception as exc:
            tally.failure(f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.close(stop=tally.calls % 2 == 1), 10.0)  # every other one just drops
        await asyncio.sleep(rng.uniform(*GAP_S))
    return tally


# --- the run -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.soak " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    scenarios = load_for_command(args.scenarios, "benchmarks.soak")
    if scenarios is None:
        return 2
    telephony = tomllib.loads(args.config.read_text()).get("telephony", {})
    missing = [k for k, on in (("sip", telephony.get("sip")), ("twilio", telephony.get("twilio")))
               if k in args.slots and not on]
    if missing:
        print(f"benchmarks.soak: --mix has {', '.join(missing)} calls but {args.config} does not enable them "
              "([telephony]); use configs/soak.toml or drop them from --mix", file=sys.stderr)
        return 2
    out = args.out or Path("bench-out") / f"soak-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    with sp.start_server(args.config, out / "server.log", args.workers) as (url, parent):
        report = asyncio.run(_run(args, url, parent, scenarios, int(telephony.get("sip_port", 5060)), out))
    report.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
                   "command": command, "machine": {**info, "load_end": load_average()},
                   "config": str(args.config), "workers": args.workers})
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "soak.md").write_text(markdown(report))
    plot(report, out / "soak.png")
    print(markdown(report))
    return 0 if report["passed"] else 1


async def _run(args: argparse.Namespace, url: str, parent: int, scenarios: list[Scenario], sip_port: int,
               out: Path) -> dict[str, Any]:
    server_pids = sp.server_pids(url, parent)
    workers = [p for p in server_pids if p != parent] or [parent]
    t0 = time.monotonic()
    idle = await asyncio.to_thread(sample, url, server_pids, workers, t0)
    end_at = time.monotonic() + args.duration
    samples: list[Sample] = []

    async def sampler() -> None:
        while True:
            samples.append(await asyncio.to_thread(sample, url, server_pids, workers, t0))
            await asyncio.sleep(args.sample_s)

    sampling = asyncio.create_task(sampler())
    tallies: dict[str, Tally] = {k: Tally() for k in set(args.slots)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs: list[tuple[str, Any]] = []
        webrtc = [k for k in args.slots if k in ("webrtc", "barge")]
        ctx = mp.get_context("spawn")
        pipes: list[tuple[Connection, Any]] = []
        for i in range(0, len(webrtc), CALLS_PER_CLIENT):
            mine, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_webrtc_main, args=(theirs, url, webrtc[i:i + CALLS_PER_CLIENT],
                                                          args.seed * 100 + i, str(args.scenarios), end_at,
                                                          args.call_range),
                               daemon=True)
            proc.start()
            pipes.append((mine, proc))
        for k in range(args.slots.count("vanish")):
            jobs.append(("vanish", _vanish_slot(url, str(args.scenarios), k, end_at, args.seed, args.call_range)))
        capture_transport = None
        if "sip" in args.slots or "twilio" in args.slots:
            speech = next(t for s in scenarios for t in s.turns).render().samples
        if "sip" in args.slots:
            tail_ms = int(args.call_range[1] * 1000)
            packets = sipp_media.rtp_packets(sipp_media.to_8k(speech, RATE), "PCMU", tail_ms=tail_ms)
            pcap = sipp_media.write_pcap(work / "caller.pcap", packets)
            capture_port = sipp_media.free_udp_port()
            capture_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: sipp_media.RtpCapture("PCMU"), local_addr=("127.0.0.1", capture_port))
            for k in range(args.slots.count("sip")):
                jobs.append(("sip", _sip_slot(sip_port, pcap, capture_port, k, end_at, args.seed, work,
                                                    args.call_range)))
        for k in range(args.slots.count("twilio")):
            jobs.append(("twilio", _twilio_slot(url, speech, RATE, k, end_at, args.seed, args.call_range)))
        results = await asyncio.gather(*(job for _, job in jobs))
        for (kind, _), tally in zip(jobs, results, strict=True):
            tallies[kind].add(tally)
        for pipe, proc in pipes:
            try:
                got = await asyncio.to_thread(pipe.poll, max(0.0, end_at - time.monotonic()) + 180)
                result = pipe.recv() if got else None
            except (EOFError, OSError):
                result = None
            if result is not None:
                for kind, summary in result.items():
                    tallies[kind].add(_from_summary(summary))
            else:
                tallies["webrtc"].failure(f"a caller process gave no result (exit code {proc.exitcode})")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if capture_transport is not None:
            capture_transport.close()
    calls_ended = time.monotonic()
    final = idle
    while time.monotonic() - calls_ended < args.settle_s:
        final = await asyncio.to_thread(sample, url, server_pids, workers, t0)
        if (final.sessions, final.peer_connections, final.tasks) <= (idle.sessions, idle.peer_connections,
                                                                    idle.tasks):
            break
        await asyncio.sleep(1.0)
    settled_s = time.monotonic() - calls_ended
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    samples.append(final)
    return summarize(args, idle, final, samples, tallies, settled_s)


def _from_summary(summary: dict[str, Any]) -> Tally:
    return Tally(calls=summary["calls"], failed=summary["failed_calls"], turns=summary["turns"],
                 failed_turns=summary["failed_turns"], frames=summary["frames"], late_frames=summary["late_frames"],
                 barge_ins=summary["barge_ins"], v2v_ms=list(summary["v2v_raw"]), errors=list(summary["errors"]))


def summarize(args: argparse.Namespace, idle: Sample, final: Sample, samples: list[Sample],
              tallies: dict[str, Tally], settled_s: float) -> dict[str, Any]:
    loaded = [s for s in samples if args.warmup_s <= s.t <= args.duration]
    after_warmup = [s.rss_mib for s in loaded if s.t <= args.warmup_s + 60.0]
    at_end = [s.rss_mib for s in loaded if s.t >= args.duration - 60.0]
    growth = None
    if after_warmup and at_end:
        base = statistics.median(after_warmup)
        growth = round(100.0 * (statistics.median(at_end) - base) / base, 2)
    leaks = {"sessions": final.sessions - idle.sessions,
             "peer_connections": final.peer_connections - idle.peer_connections,
             "tasks": final.tasks - idle.tasks, "threads": final.threads - idle.threads,
             "fds": final.fds - idle.fds}
    total = Tally()
    for t in tallies.values():
        total.add(t)
    passed = (growth is not None and growth < 5.0
              and all(leaks[k] <= 0 for k in ("sessions", "peer_connections", "tasks")))
    return {
        "passed": passed,
        "criterion": "RSS growth after warm-up < 5 % and no leaked session, peer connection or task",
        "duration_s": args.duration, "calls": args.calls, "slots": {k: args.slots.count(k) for k in KINDS},
        "warmup_s": args.warmup_s,
        "rss_growth_percent": growth,
        "rss_mib": {"idle": idle.rss_mib,
                    "after_warmup": round(statistics.median(after_warmup), 1) if after_warmup else None,
                    "end": round(statistics.median(at_end), 1) if at_end else None,
                    "peak": max((s.rss_mib for s in samples), default=None), "final_idle": final.rss_mib},
        "leaks": leaks, "settled_s": round(settled_s, 1),
        "idle": idle.__dict__, "final": final.__dict__,
        "peak_sessions": max((s.sessions for s in samples), default=0),
        "event_loop_stall_max_ms": max((s.loop_lag_max_ms for s in samples), default=None),
        "gc": {"collections": max((s.gc_collections for s in samples), default=0),
               "pause_max_ms": max((s.gc_pause_max_ms for s in samples), default=None)},
        "server_cores_used": _cores(samples, args.duration),
        "calls_by_kind": {k: t.summary() for k, t in sorted(tallies.items())},
        "all_calls": total.summary(),
        "samples": [s.__dict__ for s in samples],
    }


def _cores(samples: list[Sample], duration: float) -> float | None:
    inside = [s for s in samples if 0 < s.t <= duration]
    if len(inside) < 2:
        return None
    return round((inside[-1].cpu_s - inside[0].cpu_s) / max(1e-9, inside[-1].t - inside[0].t), 3)


# --- output --------------------------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rss = r["rss_mib"]
    lines = [
        f"# Parley soak — {r['date']}",
        "",
        f"- commit `{r['git_commit']}`; command: `{r['command']}`",
        f"- machine: {m.get('cpu_model')}, {m.get('cpus')} CPUs; load average {m.get('load_start')} → "
        f"{m.get('load_end')}",
        f"- {r['calls']} call slots for {r['duration_s']:g} s: "
        + ", ".join(f"{k} {n}" for k, n in r["slots"].items() if n)
        + f"; peak live sessions {r['peak_sessions']}; server {r['server_cores_used']} cores",
        f"- **{'PASS' if r['passed'] else 'FAIL'}** ({r['criterion']})",
        f"- RSS: idle {rss['idle']} MiB, after warm-up ({r['warmup_s']:g} s) {rss['after_warmup']}, at the end "
        f"{rss['end']} (**{r['rss_growth_percent']} %**), peak {rss['peak']}, idle again {rss['final_idle']}",
        "- leaked after the last call (+{:g} s): ".format(r["settled_s"])
        + ", ".join(f"{k} {v}" for k, v in r["leaks"].items()),
        f"- longest event-loop stall: {r['event_loop_stall_max_ms']} ms; full collections after calls ended: "
        f"{r['gc']['collections']}, the longest {r['gc']['pause_max_ms']} ms",
        "",
        "| calls | placed | failed | turns | failed turns | late frames | barge-ins | v2v p50 / p95 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, t in [*r["calls_by_kind"].items(), ("all", r["all_calls"])]:
        lines.append(f"| {kind} | {t['calls']} | {t['failed_calls']} | {t['turns']} | {t['failed_turns']} "
                     f"| {t['late_frames']} ({t['late_frame_ratio']}) | {t['barge_ins']} "
                     f"| {t['v2v_ms']['p50']} / {t['v2v_ms']['p95']} | {'; '.join(t['errors'])[:200]} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["samples"]
    if not s:
        return
    t = [x["t"] / 60.0 for x in s]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = ((ax[0][0], "rss_mib", "resident memory (MiB)"), (ax[0][1], "sessions", "live sessions"),
              (ax[1][0], "fds", "open file descriptors"), (ax[1][1], "tasks", "asyncio tasks"))
    for a, key, title in panels:
        a.plot(t, [x[key] for x in s])
        a.set_title(title)
        a.axvline(r["warmup_s"] / 60.0, color="grey", ls=":")
        a.axvline(r["duration_s"] / 60.0, color="grey", ls="--")
    for a in ax[1]:
        a.set_xlabel("minutes")
    fig.suptitle(f"Parley soak: {r['calls']} call slots, {r['duration_s'] / 60:g} min — {r['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
