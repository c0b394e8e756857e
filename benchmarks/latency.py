"""The latency harness: real calls into a Parley server, playing scenarios in real time, measured per turn.

    python -m benchmarks.latency --scenarios DIR [--url http://127.0.0.1:8080 | --config configs/x.toml]
        [--sessions N] [--compare speculation=on,off] [--out OUTDIR] [--transport webrtc|twilio]

N concurrent calls each play every scenario of DIR once per arm. With `--compare key=a,b` the arms are
interleaved: each session alternates arms from scenario to scenario, and concurrent sessions are in different
arms at any moment, so drift in machine load hits every arm alike. Writes OUTDIR/report.json, report.md and
PNG plots; exits 1 when a call fails or a turn gets no reply, 2 on bad arguments or scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import opus_mic
from benchmarks import server_process as sp
from benchmarks.conversation import CallRecord, TurnPlay, play_scenario
from benchmarks.profiler import PySpy
from benchmarks.report import write_report
from benchmarks.runinfo import LoopProbe, git_commit, load_average, machine
from benchmarks.scenarios import Scenario, ScenarioError, load_scenarios
from benchmarks.summary import paired_deltas, percentiles, summarize_arm
from benchmarks.transports import TRANSPORTS, TransportError, make_caller
from benchmarks.turn_taking import cancellations, turn_pauses, turn_taking
from benchmarks.turns import analyse_call, call_pacing

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Job:
    arm: Arm
    scenario: Scenario
    session: int


def parse_value(text: str) -> Any:
    """A command-line override value: on/off/true/false, an int, a float, else the string."""
    low = text.strip().lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_arms(compare: str | None, fixed: list[str]) -> list[Arm]:
    base: dict[str, Any] = {}
    for item in fixed:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--session {item!r}: expected key=value")
        base[key.strip()] = parse_value(value)
    if not compare:
        return [Arm("default", base)]
    key, sep, values = compare.partition("=")
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or len(choices) < 2:
        raise ValueError(f"--compare {compare!r}: expected key=a,b[,c...]")
    if len(set(choices)) != len(choices):
        raise ValueError(f"--compare {compare!r}: arm values repeat")
    return [Arm(f"{key}={v}", {**base, key.strip(): parse_value(v)}) for v in choices]


def schedule(arms: list[Arm], scenarios: list[Scenario], sessions: int, repeat: int) -> list[list[Job]]:
    """Per concurrent session, its jobs: every scenario in every arm, arm order rotating (interleaved arms)."""
    plans = []
    for s in range(sessions):
        jobs = []
        for rep in range(repeat):
            for i, scenario in enumerate(scenarios):
                k = (i + s + rep) % len(arms)
                jobs += [Job(arm, scenario, s) for arm in arms[k:] + arms[:k]]
        plans.append(jobs)
    return plans


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", required=True, type=Path, help="directory holding scenarios.json and its WAVs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"a running server (default {DEFAULT_URL} unless --config is given)")
    where.add_argument("--config", type=Path, help="start `server.py --config CONFIG` on a free port for the run")
    p.add_argument("--workers", type=int, help="with --config: server worker processes (server.py --workers)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--compare", help="arms to interleave: a session key and its values, e.g. speculation=on,off")
    p.add_argument("--session", action="append", default=[], metavar="KEY=VALUE",
                   help="session override applied to every arm (repeatable)")
    p.add_argument("--limit", type=int, help="play only the first N scenarios")
    p.add_argument("--warmup", type=int, default=0,
                   help="unmeasured calls first (one turn per arm, N times): keeps cold-start cost out of the arms")
    p.add_argument("--repeat", type=int, default=1, help="play the scenarios this many times per session and arm")
    p.add_argument("--out", type=Path, help="output directory (default bench-out/latency-<time>)")
    p.add_argument("--transport", choices=TRANSPORTS, default="webrtc")
    p.add_argument("--reply-timeout", type=float, default=30.0, help="seconds a turn may wait for its reply")
    p.add_argument("--stagger-ms", type=int, default=700, help="start offset between concurrent sessions")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for a started server")
    p.add_argument("--preencoded", action="store_true",
                   help="WebRTC callers send Opus encoded once per clip (less client CPU with many sessions)")
    p.add_argument("--profile", action="store_true", help="record the server with py-spy (OUTDIR/profile-PID.txt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.repeat < 1:
        p.error("--sessions and --repeat must be >= 1")
    if args.workers is not None and args.config is None:
        p.error("--workers needs --config (a server started by the harness)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.latency " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        arms = parse_arms(args.compare, args.session)
        scenarios = load_scenarios(args.scenarios)[: args.limit]
    except (ValueError, ScenarioError) as exc:
        print(f"benchmarks.latency: {exc}", file=sys.stderr)
        return 2
    if args.profile and PySpy.executable() is None:
        print("benchmarks.latency: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    out = args.out or Path("bench-out") / f"latency-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    try:
        with _server(args, out) as (url, parent, source):
            report = asyncio.run(drive(args, arms, scenarios, url, parent, out))
    except (sp.ServerError, TransportError) as exc:
        print(f"benchmarks.latency: {exc}", file=sys.stderr)
        return 1
    info["load_end"] = load_average()
    report.update({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "command": command,
        "machine": info,
        "scenarios": str(args.scenarios),
        "transport": args.transport,
        "sessions": args.sessions,
    })
    report["server"]["source"] = source
    written = write_report(report, out)
    _print_summary(report, written)
    failed = sum(a["summary"]["failed_turns"] + a["summary"]["failed_sessions"] for a in report["arms"].values())
    return 1 if failed else 0


@contextlib.contextmanager
def _server(args: argparse.Namespace, out: Path) -> Iterator[tuple[str, int | None, str]]:
    if args.config is not None:
        workers = f", {args.workers} workers" if args.workers else ""
        with sp.start_server(args.config, out / "server.log", args.workers, args.ready_timeout) as (url, pid):
            yield url, pid, f"started from {args.config}{workers}"
        return
    url = (args.url or DEFAULT_URL).rstrip("/")
    try:
        status = sp.healthz(url, timeout=5)
    except (OSError, ValueError) as exc:
        raise sp.ServerError(f"no Parley server answers at {url}/healthz: {exc}") from None
    if status.get("status") != "ok" or status.get("load_seconds", 0) is None:
        sp.wait_ready(url, args.ready_timeout)
    yield url, None, url


async def drive(args: argparse.Namespace, arms: list[Arm], scenarios: list[Scenario], url: str,
                parent: int | None, out: Path) -> dict[str, Any]:
    plans = schedule(arms, scenarios, args.sessions, args.repeat)
    total_turns = sum(len(j.scenario.turns) for plan in plans for j in plan)
    pids = sp.server_pids(url, parent)
    watch = sp.ProcessWatch(pids)
    lag_before = sp.loop_lag(url)
    probe = LoopProbe()
    profiler = PySpy(pids, out) if args.profile and pids else None
    records: list[CallRecord] = []
    bar = tqdm(total=total_turns, unit="turn", disable=args.no_progress, dynamic_ncols=True)
    rng = random.Random(1)

    def on_turn(play: TurnPlay) -> None:
        bar.update(1)
        if play.error:
            bar.set_postfix_str(f"turn {play.index}: {play.error}"[:60])

    async def session(plan: list[Job], index: int) -> None:
        await asyncio.sleep(index * args.stagger_ms / 1000.0)
        for job in plan:
            rec = CallRecord(job.arm.name, job.scenario.name, job.session, job.arm.overrides)
            call = make_caller(args.transport, url, job.arm.overrides, preencoded=args.preencoded)
            records.append(await play_scenario(call, job.scenario, rec, args.reply_timeout, on_turn=on_turn))
            if rec.error:
                bar.update(sum(1 for t in rec.turns if not t.speech_end_t))
            # Calls end at slightly different times so sessions do not stay phase-locked.
            await asyncio.sleep(rng.uniform(0.2, 0.6))

    if args.preencoded:
        # Encoded before any call: encoding at a turn's start would stall the loop that stamps arrivals.
        for scenario in scenarios:
            for turn in scenario.turns:
                opus_mic.cached(turn.render().samples)
    warmup = await _warm_up(args, arms, scenarios, url)
    probe.start()
    watch.begin()
    if profiler is not None:
        profiler.start()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(session(plan, i) for i, plan in enumerate(plans)))
    finally:
        wall = time.monotonic() - t0
        client_cpu = time.process_time() - cpu0
        profiles = profiler.stop() if profiler is not None else []
        await watch.finish()
        await probe.stop()
        bar.close()
    lag_after = sp.loop_lag(url)
    session_seconds = sum(max(0.0, r.end_t - r.start_t) for r in records if r.start_t)
    pauses = {s.name: turn_pauses(s) for s in scenarios}
    report_arms: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in records if r.arm == arm.name]
        turns = [{"arm": arm.name, **t, "pauses_ms": pauses[r.scenario][t["turn"]]}
                 for r in mine for t in analyse_call(r)]
        calls = [{"scenario": r.scenario, "session": r.session, "session_id": r.session_id, "error": r.error,
                  "connect_ms": None if r.connect_ms is None else round(r.connect_ms, 1),
                  "pacing": call_pacing(r) if r.received.times else None,
                  "wire_transit_ms": percentiles(r.wire.transit_ms(), (50, 99)) if r.wire else None,
                  "cancellations": cancellations(r.events)} for r in mine]
        report_arms[arm.name] = {"overrides": arm.overrides, "turns": turns, "calls": calls,
                                 "summary": summarize_arm(turns, calls)}
    return {
        "arms": report_arms,
        "paired": paired_deltas(report_arms),
        "turn_taking": turn_taking(report_arms),
        "warmup": warmup,
        "wall_s": round(wall, 1),
        "client": {"event_loop_lag_ms": probe.summary(), "cpu_s": round(client_cpu, 2),
                   "cpu_per_session_core": round(client_cpu / session_seconds, 4) if session_seconds else None},
        "server": {
            "url": url,
            "process": watch.summary(session_seconds, args.sessions),
            "event_loop_lag_max_ms": lag_after,
            "event_loop_lag_max_ms_before": lag_before,
            "profiles": [str(p) for p in profiles],
        },
    }


async def _warm_up(args: argparse.Namespace, arms: list[Arm], scenarios: list[Scenario], url: str
                   ) -> list[dict[str, Any]]:
    """Calls before the measured run (the first scenario's first turn, once per arm), reported apart: a server's
    first turns pay for lazy initialisation, which would otherwise land on whichever arm happens to go first."""
    out = []
    first = Scenario(scenarios[0].name, scenarios[0].turns[:1])
    for _ in range(args.warmup):
        for arm in arms:
            rec = CallRecord(arm.name, first.name, -1, arm.overrides)
            call = make_caller(args.transport, url, arm.overrides, preencoded=args.preencoded)
            await play_scenario(call, first, rec, args.reply_timeout)
            turns = analyse_call(rec)
            out.append({"arm": arm.name, "error": rec.error, "v2v_ms": turns[0].get("v2v_ms") if turns else None})
    return out


def _print_summary(report: dict[str, Any], written: list[Path]) -> None:
    for name, arm in report["arms"].items():
        s = arm["summary"]
        print(f"{name}: v2v p50 {s['v2v_ms']['p50']} ms, p90 {s['v2v_ms']['p90']} ms; commit rate {s['commit_rate']}; "
              f"engine in/out p95 {s['engine_inbound_ms']['p95']}/{s['engine_outbound_ms']['p95']} ms; "
              f"failed turns {s['failed_turns']}/{s['turns']}, failed sessions {s['failed_sessions']}")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    raise SystemExit(main())
