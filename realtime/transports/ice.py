"""ICE configuration a deployment needs, applied to aiortc/aioice.

aioice gathers host candidates on every non-loopback address with an ephemeral port and knows nothing of NAT.
A server needs more: loopback (a namespace with only `lo`, a local test), a chosen set of interfaces or
addresses, a public IP announced behind 1:1 NAT (cloud VMs), a UDP port range a firewall can open, and
STUN/TURN servers only when configured (aiortc's default STUN server is a third party; Parley never uses it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from typing import Any

import aioice.ice
import aiortc.rtcicetransport
import ifaddr
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer

from realtime.config import IceConfig

_settings = IceConfig()
_installed = False


def rtc_configuration(config: IceConfig) -> RTCConfiguration:
    """An explicit (possibly empty) server list: aiortc only adds its default STUN server when given None."""
    servers = [RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
               for s in config.servers]
    return RTCConfiguration(iceServers=servers)


def host_addresses(config: IceConfig, use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """The addresses to gather host candidates on, in interface order."""
    wanted_ifaces = set(config.interfaces)
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        if wanted_ifaces and adapter.nice_name not in wanted_ifaces and adapter.name not in wanted_ifaces:
            continue
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if use_ipv4 and (config.include_loopback or not ip.ip.startswith("127.")):
                    out.append(ip.ip)
            elif use_ipv6 and config.use_ipv6 and ip.ip[2] == 0:  # scope id 0: not link-local
                if config.include_loopback or ip.ip[0] != "::1":
                    out.append(ip.ip[0])
    if config.addresses:
        explicit = [a for a in config.addresses if a not in out]
        out = ([a for a in out if a in config.addresses] if not wanted_ifaces else out) + explicit
    return out


class ParleyIceConnection(aioice.ice.Connection):
    """aioice's Connection with a port range for host sockets and a 1:1-NAT public address."""

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        if not (_settings.port_min and _settings.port_max):
            candidates = await super().get_component_candidates(component, addresses, timeout)
        else:
            candidates = await self._ranged_candidates(component, addresses, timeout)
        return candidates + nat_candidates(candidates, _settings.public_ip)

    async def _ranged_candidates(
        self, component: int, addresses: list[str], timeout: int
    ) -> list[Candidate]:
        loop = asyncio.get_running_loop()
        candidates: list[Candidate] = []
        for address in addresses:
            ports = list(range(_settings.port_min, _settings.port_max + 1))
            random.shuffle(ports)
            for port in ports:
                try:
                    _, protocol = await loop.create_datagram_endpoint(
                        lambda: aioice.ice.StunProtocol(self), local_addr=(address, port)
                    )
                    break
                except OSError:
                    continue
            else:
                raise OSError(f"no free UDP port in {_settings.port_min}-{_settings.port_max} on {address}")
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
            host, bound_port = protocol.transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host), component=component, transport="udp",
                priority=candidate_priority(component, "host"), host=host, port=bound_port, type="host",
            )
            self._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        if self.stun_server:
            tasks = [
                asyncio.create_task(aioice.ice.server_reflexive_candidate(p, self.stun_server))
                for p in self._protocols
                if ipaddress.ip_address(p.local_candidate.host).version == 4
            ]
            done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
            candidates += [t.result()[0] for t in done if t.exception() is None]
            for t in pending:
                t.cancel()
        # TURN relays bind their own sockets: aioice does that part when given no host addresses.
        return candidates + await super().get_component_candidates(component, [], timeout)


def nat_candidates(candidates: list[Candidate], public_ip: str) -> list[Candidate]:
    """Server-reflexive candidates announcing `public_ip` for each private IPv4 host candidate (1:1 NAT)."""
    if not public_ip:
        return []
    out = []
    for c in candidates:
        if c.type == "host" and ipaddress.ip_address(c.host).version == 4 and not c.host.startswith("127."):
            out.append(Candidate(
                foundation=candidate_foundation("srflx", "udp", c.host), component=c.component, transport="udp",
                priority=candidate_priority(c.component, "srflx"), host=public_ip, port=c.port,
                type="srflx", related_address=c.host, related_port=c.port,
            ))
    return out


def install(config: IceConfig) -> None:
    """Apply `config` to every peer connection this process creates (aioice's gathering is module-global)."""
    global _settings, _installed
    _settings = config

    def addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return host_addresses(_settings, use_ipv4, use_ipv6)

    aioice.ice.get_host_addresses = addresses
    if not _installed:
        aiortc.rtcicetransport.Connection = ParleyIceConnection  # type: ignore[misc]
        _installed = True


def summary(config: IceConfig) -> dict[str, Any]:
    return {"host_addresses": host_addresses(config), "public_ip": config.public_ip or None,
            "port_range": [config.port_min, config.port_max] if config.port_min else None,
            "servers": [u for s in config.servers for u in s.urls]}
