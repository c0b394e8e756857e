"""Sampling the server with py-spy while the harness runs, and reading the samples back.

`py-spy record --format raw` writes collapsed stacks (`frame;frame;frame count`); `top_functions` turns them into
the functions that held the CPU (self) and the ones under which the time was spent (inclusive), per thread
kind, so a finding reads "aiortc encoder thread hops: N% of the event loop's samples".

    python -m benchmarks.profiler OUTDIR/profile-1234.txt     # print the top functions of a recorded profile
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


class PySpy:
    """One `py-spy record` per server process, stopped (and flushed) with SIGINT."""

    def __init__(self, pids: list[int], out: Path, rate: int = 100) -> None:
        self.pids = pids
        self.out = out
        self.rate = rate
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Path] = []

    @staticmethod
    def executable() -> str | None:
        """py-spy on PATH, or beside this interpreter (a virtual environment that is not activated)."""
        beside = Path(sys.executable).parent / "py-spy"
        return shutil.which("py-spy") or (str(beside) if beside.exists() else None)

    def start(self) -> None:
        exe = self.executable()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out.mkdir(parents=True, exist_ok=True)
        for pid in self.pids:
            path = self.out / f"profile-{pid}.txt"
            self.files.append(path)
            # --threads keeps thread names in the stacks: the event loop vs. aiortc's codec threads vs. models.
            cmd = [exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw", "--threads",
                   "--output", str(path), "--nonblocking"]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> list[Path]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return [f for f in self.files if f.exists()]


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


# Leaf frames of a thread that is waiting, not working: the event loop polling (uvloop's epoll shows as its
# caller), a pool thread waiting for work, a codec thread waiting for packets.
IDLE_LEAVES = ("run_app (aiohttp/web.py", "run_forever (", "_worker (concurrent/futures/thread.py:81)",
               "Condition.wait (threading.py", "Queue.get (queue.py", "select (selectors.py")


def thread_group(frame: str) -> str:
    """`thread (123): uvloop_4` → `uvloop`: pool threads of one kind counted together."""
    name = frame.split(":", 1)[-1].strip() if frame.startswith("thread") else frame
    return name.rstrip("0123456789").rstrip("_-") or name


def top_functions(path: Path, n: int = 25, group: str | None = None) -> dict[str, Any]:
    """Busy samples only (idle leaves dropped), optionally of one thread group (e.g. MainThread)."""
    stacks = read_collapsed(path)
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for frames, count in stacks:
        kind = thread_group(frames[0]) if frames and frames[0].startswith("thread") else "?"
        code = [f for f in frames if not f.startswith(("thread", "process"))]
        if not code or code[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        busy += count
        threads[kind] += count
        if group is not None and kind != group:
            continue
        self_time[code[-1]] += count
        for f in set(code):
            inclusive[f] += count
    chosen = threads[group] if group is not None else busy
    pct = 100.0 / max(1, chosen)
    return {
        "samples": busy + idle,
        "busy": busy,
        "threads": [(t, round(c * 100.0 / max(1, busy), 1)) for t, c in threads.most_common(12)],
        "self": [(f, round(c * pct, 1)) for f, c in self_time.most_common(n)],
        "inclusive": [(f, round(c * pct, 1)) for f, c in inclusive.most_common(n)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiler", description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=25)
    p.add_argument("--thread", help="only this thread group, e.g. MainThread (the event loop)")
    args = p.parse_args(argv)
    for path in args.profiles:
        top = top_functions(path, args.n, args.thread)
        print(f"== {path}: {top['samples']} samples, {top['busy']} busy")
        for title in ("threads", "self", "inclusive"):
            print(f"-- {title} (% of busy samples{' of ' + args.thread if args.thread and title != 'threads' else ''})")
            for name, pct in top[title]:
                print(f"{pct:6.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
