"""ICE settings a deployment needs: loopback, interface choice, 1:1 NAT public IP, a UDP port range, no STUN."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from benchmarks.client import ParleyCall
from realtime.config import IceConfig, IceServer
from realtime.transports import ice
from tests.conftest import run_server

PUBLIC_IP = "203.0.113.7"  # TEST-NET-3: announced only; the test never sends to it


def test_loopback_is_gathered_unless_excluded() -> None:
    assert "127.0.0.1" in ice.host_addresses(IceConfig())
    assert "127.0.0.1" not in ice.host_addresses(IceConfig(include_loopback=False))
    only_lo = ice.host_addresses(IceConfig(interfaces=["lo"]))
    assert only_lo and all(a in ("127.0.0.1", "::1") for a in only_lo)
    assert ice.host_addresses(IceConfig(addresses=["127.0.0.1"])) == ["127.0.0.1"]


def test_no_stun_server_unless_configured() -> None:
    assert ice.rtc_configuration(IceConfig()).iceServers == []
    configured = ice.rtc_configuration(IceConfig(servers=[IceServer(urls=["stun:stun.example.org:3478"])]))
    assert configured.iceServers is not None and configured.iceServers[0].urls == ["stun:stun.example.org:3478"]


def test_public_ip_is_announced_for_private_host_candidates() -> None:
    from aioice.candidate import Candidate

    def host(ip: str, port: int) -> Candidate:
        return Candidate(foundation="1", component=1, transport="udp", priority=1, host=ip, port=port, type="host")

    nat = ice.nat_candidates([host("10.0.0.5", 41000), host("127.0.0.1", 41001), host("fd00::5", 41002)], PUBLIC_IP)
    assert [(c.host, c.port, c.type, c.related_address) for c in nat] == [(PUBLIC_IP, 41000, "srflx", "10.0.0.5")]
    assert ice.nat_candidates([host("10.0.0.5", 41000)], "") == []


@pytest.mark.models
@pytest.mark.timeout(120)
async def test_port_range_is_used_and_media_flows(tmp_path: Path) -> None:
    config = f"""
[ice]
public_ip = "{PUBLIC_IP}"
port_min = 41000
port_max = 41050
"""
    with run_server(tmp_path, config) as url:
        # Inspect the answer a plain offer gets.
        ice.install(IceConfig())
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                answer = (await r.json())["sdp"]
        await pc.close()
        candidates = re.findall(r"a=candidate:\S+ \d \w+ \d+ (\S+) (\d+) typ (\w+)(?: raddr (\S+))?", answer)
        hosts = [(ip, int(port)) for ip, port, kind, _ in candidates if kind == "host"]
        assert hosts and all(41000 <= port <= 41050 for _, port in hosts), hosts
        assert any(ip == "127.0.0.1" for ip, _ in hosts)
        # Only private addresses get the public IP; this namespace has nothing but loopback.
        assert not [c for c in candidates if c[2] == "srflx"], "loopback is never announced behind NAT"
        # A full call connects over the ranged port: the data channel opens and session.created arrives.
        call = ParleyCall(url)
        await call.connect()
        assert call.session_id
        await call.close()
