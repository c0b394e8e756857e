"""SDP offer/answer (RFC 4566, RFC 3264) for a plain RTP/AVP G.711 phone call.

aiortc's `aiortc.sdp` parser was tried first: it expects WebRTC offers (ICE credentials, DTLS fingerprints,
`a=mid`) and its model of a media section has no place for an offer that is just `c=`, `m=` and `a=rtpmap`,
which is what SIP trunks send. This module reads only what a G.711 call needs and rejects what it cannot honour.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from realtime.transports.g711 import CODECS, RATE, STATIC_PAYLOAD_TYPES, Codec

FRAME_MS = 20
_STATIC_NAMES = {pt: codec for codec, pt in STATIC_PAYLOAD_TYPES.items()}
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class SdpError(ValueError):
    """The body is not a session description this module can read (SIP answers 488 and says why)."""


class NotAcceptable(SdpError):
    """A readable offer that proposes nothing Parley can do: no G.711 it allows, SRTP only, no audio."""


@dataclass
class Media:
    kind: str
    port: int
    proto: str
    formats: list[str]
    address: str | None = None
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    direction: str = "sendrecv"


@dataclass
class Offer:
    address: str | None
    media: list[Media]
    direction: str = "sendrecv"


@dataclass(frozen=True)
class Negotiated:
    """What both sides send: one G.711 codec at 20 ms, DTMF as RFC 4733 events if the offer had them."""

    codec: Codec
    payload_type: int
    dtmf_payload_type: int | None
    remote: tuple[str, int]
    direction: str
    media_index: int
    media_count: int
    offered: tuple[tuple[str, str, str], ...]  # (kind, proto, first format) of every offered m-line, in order


def parse(text: str) -> Offer:
    media: list[Media] = []
    offer = Offer(address=None, media=media)
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or not lines[0].startswith("v="):
        raise SdpError("a session description starts with v=")
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"not an SDP line: {line[:60]!r}")
        kind, value = line[0], line[2:]
        current = media[-1] if media else None
        if kind == "m":
            media.append(_media_line(value))
        elif kind == "c":
            address = _connection(value)
            if current is None:
                offer.address = address
            else:
                current.address = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name == "rtpmap" and current is not None:
                pt, encoding = _rtpmap(arg)
                current.rtpmap[pt] = encoding
            elif name in _DIRECTIONS:
                if current is None:
                    offer.direction = name
                else:
                    current.direction = name
    if not media:
        raise SdpError("the offer has no m= line")
    for m in media:
        if m.direction == "sendrecv" and offer.direction != "sendrecv":
            m.direction = offer.direction
    return offer


def negotiate(offer: Offer, allowed: list[str], ipv6: bool = False) -> Negotiated:
    """Pick the first audio stream and, in the caller's order of preference, the first codec Parley allows."""
    chosen: tuple[int, Media, Codec, int] | None = None
    reasons: list[str] = []
    for index, m in enumerate(offer.media):
        if chosen is not None or m.kind != "audio" or m.port == 0:
            continue
        if m.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
            reasons.append(f"audio over {m.proto} (only plain RTP/AVP; no SRTP)")
            continue
        for fmt in m.formats:
            pt = int(fmt)
            codec = _codec_of(pt, m.rtpmap)
            if codec is not None and codec in allowed:
                chosen = (index, m, codec, pt)
                break
        else:
            listed = ", ".join(_describe(int(f), m.rtpmap) for f in m.formats)
            reasons.append(f"no allowed codec ({', '.join(allowed)}) among {listed}")
    if chosen is None:
        raise NotAcceptable("; ".join(reasons) or "the offer has no audio stream")
    index, m, codec, pt = chosen
    address = m.address or offer.address
    if address is None:
        raise SdpError("no c= connection address for the audio stream")
    if (ipaddress.ip_address(address).version == 6) != ipv6:
        raise NotAcceptable(f"media address {address} is not of the family Parley's RTP socket uses")
    direction = m.direction
    if ipaddress.ip_address(address).is_unspecified:
        direction = "inactive"  # c=0.0.0.0: the RFC 2543 way of putting a call on hold
    dtmf = next((p for p, (name, rate) in m.rtpmap.items() if name == "TELEPHONE-EVENT" and rate == RATE), None)
    offered = tuple((o.kind, o.proto, o.formats[0] if o.formats else "0") for o in offer.media)
    return Negotiated(codec, pt, dtmf, (address, m.port), direction, index, len(offer.media), offered)


def answer(n: Negotiated, address: str, port: int, session_id: int, version: int = 1) -> str:
    """The answer: one m-line per offered m-line (RFC 3264 §6), all but the chosen audio one refused (port 0)."""
    family = "IP6" if ipaddress.ip_address(address).version == 6 else "IP4"
    lines = [
        "v=0",
        f"o=parley {session_id} {version} IN {family} {address}",
        "s=parley",
        f"c=IN {family} {address}",
        "t=0 0",
    ]
    for index in range(n.media_count):
        kind, proto, fmt = n.offered[index]
        if index != n.media_index:
            lines.append(f"m={kind} 0 {proto} {fmt}")
            continue
        formats = [n.payload_type] + ([n.dtmf_payload_type] if n.dtmf_payload_type is not None else [])
        lines.append(f"m=audio {port} RTP/AVP {' '.join(map(str, formats))}")
        lines.append(f"a=rtpmap:{n.payload_type} {n.codec}/{RATE}")
        if n.dtmf_payload_type is not None:
            lines.append(f"a=rtpmap:{n.dtmf_payload_type} telephone-event/{RATE}")
            lines.append(f"a=fmtp:{n.dtmf_payload_type} 0-15")
        lines.append(f"a=ptime:{FRAME_MS}")
        lines.append(f"a={_ANSWER_DIRECTION[n.direction]}")
    return "\r\n".join(lines) + "\r\n"


def new_session_id() -> int:
    return int(time.time() * 1000) & 0x7FFFFFFF


def _media_line(value: str) -> Media:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"m= needs media, port, proto and formats: {value[:60]!r}")
    kind, port_text, proto, *formats = parts
    port_text = port_text.split("/")[0]  # a port count ("49170/2") is legal and means nothing here
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"m= port {port_text!r} is not a port number")
    if proto.upper().startswith("RTP/") and not all(f.isdigit() and int(f) < 128 for f in formats):
        raise SdpError(f"m= payload types must be numbers 0-127: {' '.join(formats)[:60]!r}")
    return Media(kind.lower(), int(port_text), proto, formats)


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"c= must be 'IN IP4|IP6 <address>': {value[:60]!r}")
    address = parts[2].split("/")[0]  # multicast TTL suffix
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"c= address {address!r} is not an IP address") from None
    return address


def _rtpmap(arg: str) -> tuple[int, tuple[str, int]]:
    pt_text, _, encoding = arg.partition(" ")
    name, _, rest = encoding.strip().partition("/")
    rate_text = rest.split("/")[0]
    if not pt_text.isdigit() or not name or not rate_text.isdigit():
        raise SdpError(f"a=rtpmap must be '<pt> <encoding>/<rate>': {arg[:60]!r}")
    return int(pt_text), (name.upper(), int(rate_text))


def _codec_of(pt: int, rtpmap: dict[int, tuple[str, int]]) -> Codec | None:
    if pt in rtpmap:
        name, rate = rtpmap[pt]
        return next((c for c in CODECS if c == name and rate == RATE), None)
    return _STATIC_NAMES.get(pt)


def _describe(pt: int, rtpmap: dict[int, tuple[str, int]]) -> str:
    if pt in rtpmap:
        name, rate = rtpmap[pt]
        return f"{name}/{rate}"
    return _STATIC_NAMES.get(pt, f"payload type {pt}")
