"""Graceful drain: after SIGTERM a server takes no new call but lets the live ones finish, then exits by itself.

A real server process (echo stack), real aiortc calls and a real SIGTERM, as a load balancer's rolling update sends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from benchmarks.client import ParleyCall
from benchmarks.server_process import start_server
from benchmarks.sipp_media import free_udp_port
from tests.conftest import speak
from tests.test_sip import RawUac, SipServer

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, drain_s: float, sip_port: int = 0) -> Path:
    path = tmp_path / "drain.toml"
    text = f'[server]\ndrain_timeout_s = {drain_s}\n[models]\nstack = "echo"\n'
    if sip_port:
        text += f'[telephony]\nsip = true\nsip_port = {sip_port}\nrtp_port_min = 33000\nrtp_port_max = 33999\n'
    path.write_text(text)
    return path


def _sip_invite_status(sip_port: int) -> int:
    uac = RawUac(SipServer("", sip_port))
    try:
        uac.request("INVITE", "during-drain", uac.offer("0"))
        status, headers = uac.final()
        assert status != 503 or headers.get("retry-after"), headers
        return status
    finally:
        uac.close()


def _wait_exit(pid: int, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return time.monotonic() - t0
        if done:
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


async def _exited(pid: int, timeout: float) -> float | None:
    """Seconds until `pid` (our child) has exited, or None if it still runs after `timeout`."""
    return await asyncio.to_thread(_wait_exit, pid, timeout)


def test_sigterm_refuses_new_calls_and_waits_for_live_ones(tmp_path: Path) -> None:
    async def main(url: str, pid: int) -> None:
        live = ParleyCall(url)
        await live.connect()
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as r:
                assert r.status == 503 and (await r.json())["reason"] == "draining"
                assert r.headers["Retry-After"]
            async with http.get(f"{url}/healthz") as r:
                assert (await r.json())["draining"] is True
        assert await asyncio.to_thread(_sip_invite_status, sip_port) == 503
        late = ParleyCall(url)
        try:
            with pytest.raises(RuntimeError, match=r"offer rejected \(503\).*draining"):
                await late.connect()
        finally:
            await late.close()
        # The call that was up before the signal still holds a whole turn.
        speech, rate = speak("Hello, are you still there?")
        await live.play_and_wait(speech, rate)
        done = await live.wait_for("response.done", timeout=30)
        assert done["response"]["status"] == "completed"
        assert await _exited(pid, 0.5) is None  # still serving while a call is up
        await live.close()  # the caller hangs up: nothing is left, the server goes
        exited = await _exited(pid, 10)
        assert exited is not None and exited < 5, exited

    sip_port = free_udp_port()
    with start_server(_config(tmp_path, 60, sip_port), tmp_path / "server.log", ready_timeout=90) as (url, pid):
        asyncio.run(main(url, pid))
    assert "draining" in (tmp_path / "server.log").read_text()


def test_drain_ends_at_its_timeout_if_calls_stay_up(tmp_path: Path) -> None:
    async def main(url: str, pid: int) -> None:
        stays = ParleyCall(url)
        await stays.connect()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        try:
            exited = await _exited(pid, 20)
            assert exited is not None and 2.5 <= time.monotonic() - t0 <= 8, exited  # drain_timeout_s = 3
        finally:
            await stays.close()

    with start_server(_config(tmp_path, 3), tmp_path / "server.log", ready_timeout=90) as (url, pid):
        asyncio.run(main(url, pid))
