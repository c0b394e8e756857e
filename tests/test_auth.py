"""Authentication: with an API key set, nobody reaches a call, a transcript or the engine without a credential.

A real server (echo stack: real Silero VAD, canned tone reply) with `[server].api_key`, real aiohttp clients and a
real aiortc call; plus server.py's refusal to serve a non-loopback address with no key.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from benchmarks.client import ParleyCall
from realtime.auth import Credentials
from tests.conftest import ROOT, run_server

KEY = "sk-test-" + "k" * 32
CONFIG = f"""
[server]
api_key = "{KEY}"
client_secret_ttl_s = 30

[models]
stack = "echo"

[telephony]
twilio = true
"""
BEARER = {"Authorization": f"Bearer {KEY}"}
WRONG = {"Authorization": "Bearer sk-test-wrong"}
OFFER = {"sdp": "v=0\r\n", "type": "offer"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("auth"), CONFIG, ready_timeout=90) as url:
        yield url


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kw: object) -> tuple[int, object]:
    async with http.request(method, url, **kw) as r:  # type: ignore[arg-type]
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


def test_every_protected_entry_point_refuses_without_or_with_a_wrong_key(secured: str) -> None:
    async def main() -> None:
        entry_points = [
            ("POST", "/offer", {"json": OFFER}),
            ("GET", "/stats", {}),
            ("GET", "/metrics", {}),
            ("GET", "/sessions/sess_x/events", {}),
            ("GET", "/telephony/twilio", {}),
            ("POST", "/telephony/twilio/twiml", {}),
            ("POST", "/v1/realtime/client_secrets", {}),
            ("GET", "/v1/realtime", {}),
            ("POST", "/v1/realtime/calls", {"data": "v=0\r\n"}),
        ]
        async with aiohttp.ClientSession() as http:
            for method, path, kw in entry_points:
                for headers in ({}, WRONG):
                    status, body = await status_of(http, method, secured + path, headers=headers, **kw)
                    assert status == 401, (method, path, headers, status)
                    assert isinstance(body, dict) and set(body["error"]) == {"type", "message"}
            # ... and with the key each gets past authentication to its own answer.
            assert (await status_of(http, "POST", secured + "/offer", headers=BEARER, json=OFFER))[0] == 400
            assert (await status_of(http, "GET", secured + "/stats", headers=BEARER))[0] == 200
            status, text = await status_of(http, "GET", secured + "/metrics", headers=BEARER)
            assert status == 200 and "parley_" in str(text)
            assert (await status_of(http, "GET", secured + "/sessions/sess_x/events", headers=BEARER))[0] == 404
            # Phone providers cannot set headers: ?token= works under /telephony/ (and only there).
            assert (await status_of(http, "POST", f"{secured}/telephony/twilio/twiml?token={KEY}"))[0] == 200
            assert (await status_of(http, "GET", f"{secured}/stats?token={KEY}"))[0] == 401
            ws = await http.ws_connect(f"{secured}/telephony/twilio?token={KEY}")
            await ws.close()
            # The page, its files and the probes stay open for browsers and load balancers.
            for path in ("/", "/static/app.js", "/healthz", "/readyz"):
                assert (await status_of(http, "GET", secured + path))[0] == 200, path

    asyncio.run(main())


def test_a_client_secret_opens_one_call_and_no_more(secured: str) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            status, minted = await status_of(http, "POST", secured + "/v1/realtime/client_secrets", headers=BEARER)
            assert status == 200 and isinstance(minted, dict)
            secret = minted["value"]
            assert secret.startswith("ek_") and minted["expires_at"] > 0
            # A client secret is no API key: it cannot mint more, read stats or tap events.
            as_secret = {"Authorization": f"Bearer {secret}"}
            for method, path in (("POST", "/v1/realtime/client_secrets"), ("GET", "/stats")):
                assert (await status_of(http, method, secured + path, headers=as_secret))[0] == 401
        call = ParleyCall(secured, token=secret)
        try:
            await call.connect()
            assert call.session_id
        finally:
            await call.close()
        again = ParleyCall(secured, token=secret)
        try:
            with pytest.raises(RuntimeError, match=r"offer rejected \(401\)"):
                await again.connect()
        finally:
            await again.close()

    asyncio.run(main())


def test_client_secrets_expire_and_are_bound_to_the_key() -> None:
    creds = Credentials("key-one", secret_ttl_s=60)
    value, expires_at = creds.mint(now=1000.0)
    assert expires_at == 1060
    assert not creds.redeem(value, now=1060.0)  # expired
    value, _ = creds.mint(now=1000.0)
    assert not Credentials("key-two").redeem(value, now=1001.0)  # another key's signature
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert not creds.redeem(forged, now=1001.0)
    assert creds.redeem(value, now=1001.0)
    assert not creds.redeem(value, now=1002.0)  # used


def test_refuses_a_non_loopback_address_without_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_API_KEY"}
    cfg = tmp_path / "open.toml"
    cfg.write_text('[models]\nstack = "echo"\n')
    proc = subprocess.run([sys.executable, "server.py", "--config", str(cfg), "--host", "0.0.0.0", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "without an API key" in proc.stderr and "PARLEY_API_KEY" in proc.stderr
    assert "--allow-unauthenticated" in proc.stderr


def test_openai_realtime_clients_need_the_key_or_a_client_secret(secured: str) -> None:
    from openai import AsyncOpenAI

    async def session_created(api_key: str) -> str:
        client = AsyncOpenAI(base_url=f"{secured}/v1", api_key=api_key, max_retries=0)
        async with client.realtime.connect(model="parley") as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            return event.type

    async def main() -> None:
        assert await session_created(KEY) == "session.created"  # the SDK sends its api_key as the Bearer token
        with pytest.raises(Exception, match="401"):
            await session_created("sk-test-wrong")
        async with aiohttp.ClientSession() as http:
            _, minted = await status_of(http, "POST", secured + "/v1/realtime/client_secrets", headers=BEARER)
        assert isinstance(minted, dict) and minted["session"]["type"] == "realtime"
        secret = minted["value"]
        call = ParleyCall(secured, token=secret, openai=True)
        try:
            await call.connect()  # POST /v1/realtime/calls, 201, session.created on oai-events
            assert call.session_id and call.session_id.startswith("sess_")
        finally:
            await call.close()
        again = ParleyCall(secured, token=secret, openai=True)
        try:
            with pytest.raises(RuntimeError, match=r"call rejected \(401\)"):
                await again.connect()
        finally:
            await again.close()

    asyncio.run(main())
