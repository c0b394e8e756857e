"""`--workers N`: several processes share one port and each serves calls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.client import ParleyCall
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


async def test_two_workers_share_the_port_and_both_take_calls(tmp_path: Path) -> None:
    cfg = tmp_path / "echo.toml"
    cfg.write_text('[models]\nstack = "echo"\n[server]\nmax_sessions = 1\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "server.py", "--config", str(cfg), "--port", str(port), "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    if health["status"] == "ok":
                        pids.add(health["pid"])
            time.sleep(0.1)
        assert len(pids) == 2, pids
        # One session per worker: two calls at once can only both succeed if both workers take one.
        calls = [ParleyCall(url) for _ in range(2)]
        for call in calls:
            for _ in range(20):  # the kernel picks the worker; retry the one that hit the full worker
                try:
                    await call.connect()
                    break
                except RuntimeError as exc:
                    assert "503" in str(exc)
                    await call.close()
                    calls[calls.index(call)] = call = ParleyCall(url)
        served_by = {c.session_id.split("_")[1] for c in calls if c.session_id}
        assert served_by == {str(p) for p in pids}
        for call in calls:
            await call.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
