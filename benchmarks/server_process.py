"""A Parley server under test: started from a config (or found behind a URL) and watched through /proc.

The harness reads the server's own processes — the parent and, with `--workers N`, every worker — for resident
memory and CPU seconds, so the report can say what one session costs. That only works on the same host; for a
remote URL the process figures are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class ServerError(RuntimeError):
    """The server could not be started or reached."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(url: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=timeout) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Until /healthz says ok; raises ServerError if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise ServerError(f"the server exited with {proc.returncode} while starting:\n{tail}")
        try:
            status = healthz(url)
            # `load_seconds` appears once loading has finished, warm-up included; "ok" alone comes earlier.
            if status.get("status") == "ok" and status.get("load_seconds", 0) is not None:
                return
            last = f"status {status.get('status')!r}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise ServerError(f"{url} not ready within {timeout:.0f} s ({last})")


@contextlib.contextmanager
def start_server(config: str | Path, log: Path, workers: int | None = None,
                 ready_timeout: float = 300.0) -> Iterator[tuple[str, int]]:
    """`python server.py --config CONFIG` on a free loopback port; yields (url, pid) and stops it on exit."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "server.py"), "--config", str(config), "--host", "127.0.0.1",
           "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, ready_timeout, proc, log)
            if workers and workers > 1:
                _wait_workers(proc.pid, workers, ready_timeout)
            yield url, proc.pid
        finally:
            stop_process_group(proc)


def _wait_workers(parent: int, workers: int, timeout: float) -> None:
    # /healthz answered from one worker; give the others the same time to load their models.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(children(parent)) < workers:
        time.sleep(0.25)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- /proc ------------------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def server_pids(url: str, known_parent: int | None = None) -> list[int]:
    """The server's processes: the parent started here, or the worker /healthz names plus its server.py parent."""
    if known_parent is not None:
        return [known_parent, *children(known_parent)]
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    try:
        pid = int(healthz(url)["pid"])
    except (OSError, ValueError, KeyError):
        return []
    if not Path(f"/proc/{pid}").exists():
        return []  # another host or PID namespace
    parent = _ppid(pid)
    if parent is not None and "server.py" in _cmdline(parent):
        return [parent, *children(parent)]
    return [pid]


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    rss_bytes: int


def read_proc(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # Fields after the command: state=0, ..., utime=11, stime=12 (proc(5), counted from 'state').
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ProcSample(cpu, int(statm.split()[1]) * PAGE_BYTES)


@dataclass
class ProcessWatch:
    """Samples CPU seconds and RSS of a set of processes while a run goes on."""

    pids: list[int]
    interval_s: float = 0.5
    start: dict[int, ProcSample] = field(default_factory=dict)
    end: dict[int, ProcSample] = field(default_factory=dict)
    peak_rss: dict[int, int] = field(default_factory=dict)
    # (monotonic time, total CPU seconds, total RSS) for a CPU-use timeline.
    series: list[tuple[float, float, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _t0: float = 0.0
    _t1: float = 0.0

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self.start = self._read()
        self._task = asyncio.create_task(self._run())

    async def finish(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.end = self._read()
        self._t1 = time.monotonic()

    def _read(self) -> dict[int, ProcSample]:
        out = {}
        for pid in self.pids:
            sample = read_proc(pid)
            if sample is not None:
                out[pid] = sample
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), sample.rss_bytes)
        return out

    async def _run(self) -> None:
        while True:
            now = self._read()
            self.series.append((time.monotonic(), sum(s.cpu_s for s in now.values()),
                                sum(s.rss_bytes for s in now.values())))
            await asyncio.sleep(self.interval_s)

    def summary(self, session_seconds: float, peak_sessions: int) -> dict[str, Any]:
        """Totals over the run and what one session cost (CPU per session-second; RSS growth per session)."""
        if not self.start:
            return {"available": False}
        wall = max(1e-9, self._t1 - self._t0)
        cpu = sum(self.end[p].cpu_s - self.start[p].cpu_s for p in self.end if p in self.start)
        rss_start = sum(s.rss_bytes for s in self.start.values())
        rss_peak = max((r for _, _, r in self.series), default=rss_start)
        mib = 1024 * 1024
        return {
            "available": True,
            "pids": sorted(self.start),
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 2),
            "cpu_cores_used": round(cpu / wall, 3),
            "rss_start_mib": round(rss_start / mib, 1),
            "rss_peak_mib": round(rss_peak / mib, 1),
            "session_seconds": round(session_seconds, 1),
            "cpu_per_session_core": round(cpu / session_seconds, 4) if session_seconds > 0 else None,
            "rss_per_session_mib": round((rss_peak - rss_start) / mib / peak_sessions, 2) if peak_sessions else None,
        }


def healthz_by_worker(url: str, pids: list[int] | None = None, tries: int = 6) -> dict[int, dict[str, Any]]:
    """/healthz of each worker: every connection lands on one worker, so ask until each of `pids` has answered
    (or `tries` times when the pids are not known)."""
    wanted = set(pids or [])
    out: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        with contextlib.suppress(OSError, ValueError, KeyError):
            h = healthz(url)
            out[int(h["pid"])] = h
        if wanted and wanted <= set(out):
            break
    return out


def loop_lag(url: str, tries: int = 6) -> dict[str, float]:
    """`event_loop_lag_max_ms` per worker pid (each new connection may land on another worker)."""
    return {str(pid): float(h["event_loop_lag_max_ms"]) for pid, h in healthz_by_worker(url, tries=tries).items()
            if "event_loop_lag_max_ms" in h}
