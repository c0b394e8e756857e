"""A finished call gives its memory back when it ends (realtime/reclaim.py).

The server runs in this process, so the test can look at what is still allocated: five real Twilio calls on the
echo stack (Silero VAD, FFmpeg resampling, the session's audio ring), hung up the ways callers hang up, and
Python's automatic cyclic collector switched off, so only the engine's own collection can have freed them. Without
it all five stay in memory until the collector happens to run (the soak grew ~1 MiB a call). With it at most the
latest stays: something outside the collector's sight keeps the last cancelled task's exception, whose traceback
holds that call, until the next call's replaces it (one call's worth, not a growth).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from benchmarks.server_process import free_port
from benchmarks.twilio_client import TwilioCall
from realtime.app import ENGINE, create_app
from realtime.audio import AudioRing
from realtime.config import load_config
from realtime.listener import Listener
from realtime.session import Session
from tests.conftest import silence, speak

CONFIG = """
[server]
max_sessions = 4
rate_limit_per_minute = 0
[models]
stack = "echo"
[telephony]
twilio = true
media_timeout_ms = 2000
"""


def alive() -> dict[str, int]:
    objects = gc.get_objects()
    return {kind.__name__: sum(isinstance(o, kind) for o in objects) for kind in (Session, Listener, AudioRing)}


async def test_finished_calls_are_freed_when_they_end_not_when_the_collector_runs(tmp_path: Path) -> None:
    path = tmp_path / "echo.toml"
    path.write_text(CONFIG)
    app = create_app(load_config(path))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    engine = app[ENGINE]
    question, rate = speak("Hello there, can you hear me?")
    gc.disable()
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.2)
        assert engine.ready
        baseline = alive()
        # A caller who hangs up properly, one who drops the socket, and two at once.
        for batch in ([True], [False], [True, False], [True]):
            calls = [TwilioCall(url) for _ in batch]
            for call in calls:
                await call.connect()
                call.play(np.concatenate([question, silence(400)]), rate)
            for call in calls:
                done = await call.wait_for("response.done", timeout=30)
                assert done["response"]["status"] == "completed"
            for call, stop in zip(calls, batch, strict=True):
                await call.close(stop=stop)
        deadline = time.monotonic() + 15
        while (engine.sessions or engine.reclaimer.collections == 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not engine.sessions, "calls still open"
        await asyncio.sleep(engine.reclaimer.delay_s + 0.5)  # the last close's collection
        left = {kind: n - baseline[kind] for kind, n in alive().items()}
        assert all(n <= 1 for n in left.values()), f"finished calls still in memory: {left}"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
            report = (await r.json())["gc"]
        assert report["collections"] >= 1 and report["frozen_objects"] > 10_000, report
        # Sanity bound, not a speed goal: the warm stack is frozen out, so a collection walks live calls only.
        assert report["max_pause_ms"] < 50, report
    finally:
        gc.enable()
        gc.unfreeze()
        await runner.cleanup()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)  # realtime/drain.py took it over
