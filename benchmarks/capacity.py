"""How many concurrent calls a server carries: ramp the call count until the audio stops being on time.

    python -m benchmarks.capacity --config configs/echo.toml [--workers N] [--levels 1,8,16,24,32]
    python -m benchmarks.capacity --config configs/default.toml --mode latency --levels 1,2,3

`--mode frames` (for the cheap echo stack): at each level, N calls connect, then all of them talk (the standard
corpus's turns, each call starting at a different turn) for `--duration` seconds while every received frame's
pacing is checked. A level passes with zero late frames (> 20 ms behind the stream's best pacing) and no failed
call. The calls run in several client processes so the caller side is not one saturated event loop; each client
reports its own loop lag, so client saturation can be told from server saturation.

`--mode latency` (for a real stack): at each level, the latency harness plays the scenarios with N concurrent
sessions; a level passes while its median voice-to-voice latency stays within `--latency-factor` (1.5) of the
single-session median.

Every level reports the late-frame ratio, engine-added latency p95 per direction, voice-to-voice p50/p95 and the
server's CPU and resident memory per call (its growth over the idle server, divided by the calls). A fresh server
is started per level with `--config`, so one level's leftovers never weigh on the next. Writes
OUTDIR/capacity.json, capacity.md and capacity.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import random
import shlex
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import opus_mic
from benchmarks import server_process as sp
from benchmarks.client import ParleyCall
from benchmarks.conversation import CallRecord, play_scenario
from benchmarks.latency import drive, parse_arms
from benchmarks.latency import parse_args as latency_args
from benchmarks.pacing import LATE_MS, pacing
from benchmarks.report import write_report
from benchmarks.runinfo import LoopProbe, git_commit, load_average, machine
from benchmarks.scenarios import STANDARD_CORPUS, Scenario, Turn, load_for_command, load_scenarios
from benchmarks.summary import percentiles
from benchmarks.turns import analyse_call

CALLS_PER_CLIENT = 6  # aiortc calls one client process drives before its own loop lag shows in the figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="start `server.py --config CONFIG` (fresh per level)")
    where.add_argument("--url", help="a running server (its max_sessions must allow the highest level)")
    p.add_argument("--workers", type=int, help="with --config: server worker processes")
    p.add_argument("--mode", choices=("frames", "latency"), default="frames")
    p.add_argument("--levels", help="concurrent call counts to try (default: 1,8,16,24,32 in frames mode, 1,2,3 in "
                   "latency mode)")
    p.add_argument("--scenarios", type=Path, default=STANDARD_CORPUS, help="speech to play (default: corpus)")
    p.add_argument("--limit", type=int, help="latency mode: play only the first N scenarios per session")
    p.add_argument("--duration", type=float, default=30.0, help="frames mode: seconds all calls talk per level")
    p.add_argument("--calls-per-client", type=int, default=CALLS_PER_CLIENT)
    p.add_argument("--session", action="append", default=[], metavar="KEY=VALUE", help="session override")
    p.add_argument("--latency-factor", type=float, default=1.5, help="latency mode: allowed median v2v ratio")
    p.add_argument("--late-ms", type=float, default=LATE_MS, help="a frame later than this is late")
    p.add_argument("--max-late-ratio", type=float, default=0.0,
                   help="frames mode: late frames tolerated per level (default 0: none; a shared machine's "
                        "background load makes a few late frames at any level)")
    p.add_argument("--stop-after", type=int, default=2, help="stop after this many failing levels in a row")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.levels is None:
        args.levels = "1,8,16,24,32" if args.mode == "frames" else "1,2,3"
    try:
        args.level_list = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    except ValueError:
        p.error(f"--levels {args.levels!r}: expected comma-separated integers")
    if not args.level_list or args.level_list[0] < 1:
        p.error("--levels must be positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.capacity " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    scenarios = load_for_command(args.scenarios, "benchmarks.capacity")
    if scenarios is None:
        return 2
    try:
        overrides = parse_arms(None, args.session)[0].overrides
    except ValueError as exc:
        print(f"benchmarks.capacity: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("bench-out") / f"capacity-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    levels: list[dict[str, Any]] = []
    failing = 0
    baseline: float | None = None
    for level in args.level_list:
        print(f"level {level}: ", end="", flush=True, file=sys.stderr)
        try:
            with _server(args, out, level) as (url, parent):
                if args.mode == "frames":
                    result = frames_level(url, parent, level, scenarios, args, overrides)
                else:
                    result = latency_level(url, parent, level, scenarios, args, out)
        except sp.ServerError as exc:
            print(f"benchmarks.capacity: {exc}", file=sys.stderr)
            return 1
        if args.mode == "latency":
            median = result["v2v_ms"]["p50"]
            if level == args.level_list[0]:
                baseline = median
            result["v2v_ratio"] = round(median / baseline, 2) if median and baseline else None
            result["passed"] = bool(result["failed_turns"] == 0 and result["v2v_ratio"] is not None
                                    and result["v2v_ratio"] <= args.latency_factor)
        levels.append(result)
        print(_one_line(result), file=sys.stderr)
        failing = 0 if result["passed"] else failing + 1
        if failing >= args.stop_after:
            break
    passed = [r["level"] for r in levels if r["passed"]]
    report = {
        "mode": args.mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "command": command,
        "machine": {**info, "load_end": load_average()},
        "server": str(args.config or args.url),
        "workers": args.workers,
        "criterion": (f"late frames (> {args.late_ms:g} ms) at most {args.max_late_ratio:.2%} of frames and no "
                      "failed call" if args.mode == "frames"
                      else f"median v2v within {args.latency_factor}x of {args.level_list[0]} session(s)"),
        "capacity": max(passed) if passed else 0,
        "capacity_zero_late": max((r["level"] for r in levels if r.get("zero_late")), default=0),
        "first_failing_level": next((r["level"] for r in levels if not r["passed"]), None),
        "levels": levels,
    }
    (out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "capacity.md").write_text(markdown(report))
    plot(report, out / "capacity.png")
    print(markdown(report))
    return 0


@contextlib.contextmanager
def _server(args: argparse.Namespace, out: Path, level: int) -> Iterator[tuple[str, int | None]]:
    if args.config is None:
        yield args.url.rstrip("/"), None
        return
    with sp.start_server(args.config, out / f"server-{level}.log", args.workers) as (url, pid):
        yield url, pid


# --- frames mode ---------------------------------------------------------------------------------------------


def frames_level(url: str, parent: int | None, level: int, scenarios: list[Scenario], args: argparse.Namespace,
                 overrides: dict[str, Any]) -> dict[str, Any]:
    clients = max(1, math.ceil(level / args.calls_per_client))
    share = [level // clients + (1 if i < level % clients else 0) for i in range(clients)]
    setup_s = 4.0 + 0.35 * max(share)  # connects are staggered; each takes ~0.2–0.5 s on a busy machine
    start_at = time.monotonic() + setup_s
    end_at = start_at + args.duration
    pids = sp.server_pids(url, parent)
    idle = _rss_bytes(pids)  # the server before any call: what the calls add is measured against it
    ctx = mp.get_context("spawn")
    pipes: list[Connection] = []
    procs = []
    for i, n in enumerate(share):
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_client_main, args=(theirs, url, n, i, str(args.scenarios), start_at, end_at,
                                                      args.late_ms, overrides), daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    watch = asyncio.run(_watch(pids, start_at, end_at))
    lag = sp.loop_lag(url)
    calls: list[dict[str, Any]] = []
    client_lag: list[dict[str, Any]] = []
    for pipe, proc, n in zip(pipes, procs, share, strict=True):
        try:
            result = pipe.recv() if pipe.poll(max(0.0, end_at - time.monotonic()) + 120) else None
        except (EOFError, OSError):
            result = None  # the client process died without a result
        proc.join(10)
        if result is not None and "calls" in result:
            calls += result["calls"]
            client_lag.append(result["loop_lag_ms"])
        else:
            error = (result or {}).get("error", f"client process gave no result (exit code {proc.exitcode})")
            calls += [{"error": error, "frames": 0, "late": 0}] * n
        if proc.is_alive():
            proc.kill()
    frames = sum(c["frames"] for c in calls)
    late = sum(c["late"] for c in calls)
    failed = sum(1 for c in calls if c.get("error"))
    v2v = [v for c in calls for v in c.get("v2v_ms", [])]
    return {
        "level": level,
        "passed": failed == 0 and frames > 0 and late <= args.max_late_ratio * frames,
        "zero_late": late == 0 and failed == 0 and frames > 0,
        "calls": len(calls),
        "failed_calls": failed,
        "errors": sorted({c["error"] for c in calls if c.get("error")})[:5],
        "frames": frames,
        "late_frames": late,
        "late_frame_ratio": round(late / frames, 5) if frames else None,
        "bunched_frames": sum(c.get("bunched", 0) for c in calls),
        "lateness_p99_ms": max((c.get("lateness_p99_ms", 0.0) for c in calls), default=None),
        "lateness_max_ms": max((c.get("lateness_max_ms", 0.0) for c in calls), default=None),
        "turns": sum(c.get("turns", 0) for c in calls),
        "failed_turns": sum(c.get("failed_turns", 0) for c in calls),
        "v2v_ms": percentiles(v2v, (50, 90, 95)),
        "engine_inbound_ms": percentiles((v for c in calls for v in c.get("inbound_ms", [])), (50, 95)),
        "engine_outbound_ms": percentiles((v for c in calls for v in c.get("outbound_ms", [])), (50, 95)),
        "decision_late_ms": percentiles((v for c in calls for v in c.get("decision_late_ms", [])), (50, 95)),
        **_per_call(watch, idle, level),
        "client_processes": len(share),
        "client_loop_lag_ms": {"p99_max": max((x["p99"] or 0.0 for x in client_lag), default=None),
                               "max": max((x["max"] or 0.0 for x in client_lag), default=None)},
        "server": {"process": watch, "event_loop_lag_max_ms": lag},
    }


def _rss_bytes(pids: list[int]) -> int | None:
    samples = [sp.read_proc(p) for p in pids]
    return sum(s.rss_bytes for s in samples if s is not None) if pids else None


def _per_call(watch: dict[str, Any], idle_rss: int | None, level: int) -> dict[str, Any]:
    """Server CPU (cores) and resident memory (MiB) one call costs at this level."""
    if not watch.get("available"):
        return {"cpu_per_call_cores": None, "rss_per_call_mib": None}
    rss_per_call = None
    if idle_rss is not None:
        rss_per_call = round((watch["rss_peak_mib"] - idle_rss / (1024 * 1024)) / level, 2)
    return {"cpu_per_call_cores": round(watch["cpu_cores_used"] / level, 4), "rss_per_call_mib": rss_per_call,
            "rss_idle_mib": round(idle_rss / (1024 * 1024), 1) if idle_rss is not None else None}


async def _watch(pids: list[int], start_at: float, end_at: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    watch = sp.ProcessWatch(pids)
    watch.begin()
    await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    await watch.finish()
    return watch.summary(0.0, 0)


def _client_main(conn: Connection, url: str, calls: int, index: int, scenario_dir: str, start_at: float,
                 end_at: float, late_ms: float, overrides: dict[str, Any]) -> None:
    import uvloop

    from realtime.transports import aiortc_tuning

    # The callers share the server's cores: they decode with the server's cheaper receive path (mono, no Task
    # a frame), so less of the machine goes to the load generator.
    aiortc_tuning.install()

    scenarios = load_scenarios(scenario_dir)
    try:
        result = uvloop.run(_client(url, calls, index, scenarios, start_at, end_at, late_ms, overrides))
    except Exception as exc:  # reported as this process's calls failing, not a crash of the whole ramp
        result = {"error": f"client process failed: {type(exc).__name__}: {exc}"}
    conn.send(result)
    conn.close()


async def _client(url: str, n: int, index: int, scenarios: list[Scenario], start_at: float, end_at: float,
                  late_ms: float, overrides: dict[str, Any]) -> dict[str, Any]:
    turns: list[Turn] = [t for s in scenarios for t in s.turns]
    # Encode every turn now: encoding at a turn's start would stall this loop and delay every call's arrival
    # stamps, which would read as the server's lateness.
    for turn in turns:
        opus_mic.cached(turn.render().samples)
    rng = random.Random(index)
    probe = LoopProbe()
    probe.start()

    async def one(k: int) -> dict[str, Any]:
        # Staggered connects; each call starts at its own turn, so speech and replies do not line up.
        await asyncio.sleep(k * 0.3 + rng.uniform(0.0, 0.2))
        first = rng.randrange(len(turns))
        rotated = Scenario(f"load-{index}-{k}", tuple(turns[first:] + turns[:first]) * 3)
        record = CallRecord("load", rotated.name, index * 1000 + k, overrides)
        call = ParleyCall(url, session=overrides, keep_audio=False, preencoded=True)
        await play_scenario(call, rotated, record, reply_timeout=15.0, start_at=start_at + rng.uniform(0, 1.5),
                            until=end_at)
        pace = pacing(record.received.times, record.received.pts, start_at, end_at, late_ms)
        analysed = [t for t in analyse_call(record) if t["turn"] < len(record.turns)]
        ok = [t for t in analysed if t.get("ok")]
        return {**pace.as_dict(), "error": record.error, "turns": len(analysed),
                "failed_turns": len(analysed) - len(ok), "v2v_ms": [t["v2v_ms"] for t in ok],
                "inbound_ms": [t["engine_inbound_ms"] for t in ok],
                "decision_late_ms": [t["decision_late_ms"] for t in ok],
                "outbound_ms": [t["engine_outbound_ms"] for t in ok if t.get("engine_outbound_ms") is not None]}

    results = await asyncio.gather(*(one(k) for k in range(n)))
    await probe.stop()
    return {"calls": list(results), "loop_lag_ms": probe.summary()}


# --- latency mode --------------------------------------------------------------------------------------------


def latency_level(url: str, parent: int | None, level: int, scenarios: list[Scenario], args: argparse.Namespace,
                  out: Path) -> dict[str, Any]:
    # One warm-up call per level: a fresh server's first turns pay lazy initialisation, not load.
    largs = latency_args(["--scenarios", str(args.scenarios), "--url", url, "--sessions", str(level), "--warmup",
                          "1", "--no-progress", *[a for s in args.session for a in ("--session", s)]])
    scenarios = scenarios[: args.limit]
    arms = parse_arms(None, args.session)
    report = asyncio.run(drive(largs, arms, scenarios, url, parent, out / f"level-{level}"))
    report.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
                   "machine": machine(), "sessions": level, "transport": "webrtc", "scenarios": str(args.scenarios)})
    report["server"]["source"] = url
    write_report(report, out / f"level-{level}")
    s = report["arms"]["default"]["summary"]
    turns = report["arms"]["default"]["turns"]
    proc = report["server"]["process"]
    return {"level": level, "passed": False,
            "v2v_ms": percentiles((t["v2v_ms"] for t in turns if t.get("ok")), (50, 90, 95)), "turns": s["turns"],
            "failed_turns": s["failed_turns"] + s["failed_sessions"], "late_frame_ratio": s["late_frame_ratio"],
            "engine_inbound_ms": s["engine_inbound_ms"], "engine_outbound_ms": s["engine_outbound_ms"],
            "cpu_per_call_cores": round(proc["cpu_cores_used"] / level, 4) if proc.get("available") else None,
            "rss_per_call_mib": proc.get("rss_per_session_mib"), "server": report["server"]}


# --- output --------------------------------------------------------------------------------------------------


def _one_line(r: dict[str, Any]) -> str:
    verdict = "pass" if r["passed"] else "FAIL"
    if "late_frames" in r:
        return (f"{verdict}: {r['late_frames']} late of {r['frames']} frames (p99 lateness {r['lateness_p99_ms']} "
                f"ms), {r['failed_calls']} failed calls, v2v p50 {r['v2v_ms']['p50']} ms, client lag p99 "
                f"{r['client_loop_lag_ms']['p99_max']} ms")
    return f"{verdict}: v2v p50 {r['v2v_ms']['p50']} ms (x{r.get('v2v_ratio')}), failed turns {r['failed_turns']}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Parley capacity ({report['mode']} mode) — {report['date']}",
        "",
        f"- commit `{report['git_commit']}`; command: `{report['command']}`",
        f"- machine: {m.get('cpu_model')}, {m.get('cpus')} CPUs; load average {m.get('load_start')} → "
        f"{m.get('load_end')}",
        f"- server: {report['server']}, workers {report['workers'] or 'as configured'}; criterion: "
        f"{report['criterion']}",
        f"- **capacity: {report['capacity']} concurrent calls**; first failing level: "
        f"{report['first_failing_level']}"
        + (f"; with zero late frames: {report['capacity_zero_late']}" if report["mode"] == "frames" else ""),
        "",
    ]
    if report["mode"] == "frames":
        lines += ["| calls | pass | late frames | late ratio | lateness p99 / max ms | engine in / out p95 ms "
                  "| decision late p95 ms | v2v p50 / p95 ms | failed calls | server cores | cores per call "
                  "| MiB per call | client lag p99 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["levels"]:
            proc = r["server"]["process"]
            lines.append(
                f"| {r['level']} | {'yes' if r['passed'] else 'no'} | {r['late_frames']} | {r['late_frame_ratio']} "
                f"| {r['lateness_p99_ms']} / {r['lateness_max_ms']} | {_p95(r, 'engine_inbound_ms')} / "
                f"{_p95(r, 'engine_outbound_ms')} | {_p95(r, 'decision_late_ms')} "
                f"| {r['v2v_ms']['p50']} / {r['v2v_ms'].get('p95')} "
                f"| {r['failed_calls']} | {proc.get('cpu_cores_used', '–')} | {r.get('cpu_per_call_cores')} "
                f"| {r.get('rss_per_call_mib')} | {r['client_loop_lag_ms']['p99_max']} |")
    else:
        lines += ["| sessions | pass | v2v p50 | ratio | p95 | failed turns | late ratio | engine in / out p95 ms "
                  "| cores per call | MiB per call |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["levels"]:
            lines.append(
                f"| {r['level']} | {'yes' if r['passed'] else 'no'} | {r['v2v_ms']['p50']} | {r['v2v_ratio']} "
                f"| {r['v2v_ms'].get('p95')} | {r['failed_turns']} | {r['late_frame_ratio']} "
                f"| {_p95(r, 'engine_inbound_ms')} / {_p95(r, 'engine_outbound_ms')} "
                f"| {r.get('cpu_per_call_cores')} | {r.get('rss_per_call_mib')} |")
    return "\n".join(lines) + "\n"


def _p95(r: dict[str, Any], key: str) -> Any:
    return (r.get(key) or {}).get("p95")


def plot(report: dict[str, Any], path: Path) -> None:
    """Four panels against the call count: late frames, engine-added p95, voice-to-voice, cost per call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    if not levels:
        return
    n = [r["level"] for r in levels]

    def series(get: Any) -> list[float]:
        out = []
        for r in levels:
            v = get(r)
            out.append(float("nan") if v is None else float(v))
        return out

    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0][0].plot(n, series(lambda r: 100.0 * (r.get("late_frame_ratio") or 0.0)), "o-")
    ax[0][0].axhline(0.1, color="grey", ls=":", label="0.1 %")
    ax[0][0].set(title="late frames", ylabel="% of received frames")
    ax[0][0].legend()
    ax[0][1].plot(n, series(lambda r: _p95(r, "engine_inbound_ms")), "o-", label="inbound p95")
    ax[0][1].plot(n, series(lambda r: _p95(r, "engine_outbound_ms")), "s-", label="outbound p95")
    ax[0][1].set(title="engine-added latency", ylabel="ms")
    ax[0][1].legend()
    ax[1][0].plot(n, series(lambda r: r["v2v_ms"].get("p50")), "o-", label="p50")
    ax[1][0].plot(n, series(lambda r: r["v2v_ms"].get("p95")), "s-", label="p95")
    ax[1][0].set(title="voice to voice (caller side)", ylabel="ms", xlabel="concurrent calls")
    ax[1][0].legend()
    cpu = ax[1][1]
    cpu.plot(n, series(lambda r: r.get("cpu_per_call_cores")), "o-", color="C0")
    cpu.set(title="server cost per call", ylabel="CPU cores", xlabel="concurrent calls")
    mem = cpu.twinx()
    mem.plot(n, series(lambda r: r.get("rss_per_call_mib")), "s--", color="C1")
    mem.set_ylabel("resident MiB", color="C1")
    fig.suptitle(f"Parley capacity ({report['mode']} mode, {report['server']}) — {report['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
