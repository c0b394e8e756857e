"""SIP messages (RFC 3261 §7): parsing a datagram, and writing the responses and requests a UAS sends.

Only the syntax a user agent server depends on is interpreted (start line, headers, compact names, Content-Length,
the tag/branch parameters, name-addr URIs); every other header is carried as text.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE = 65535
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding"}
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3}) ?(.*)$")
REQUIRED = ("via", "from", "to", "call-id", "cseq")


class SipParseError(ValueError):
    """Not a valid SIP message; `partial` holds what was read, enough to answer 400 when it has a Via."""

    def __init__(self, message: str, partial: SipMessage | None = None) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class SipMessage:
    method: str = ""  # requests
    uri: str = ""
    status: int = 0  # responses
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # (lower-case full name, value)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("cseq") or "").strip().partition(" ")
        if not number.isdigit():
            raise SipParseError(f"CSeq {self.get('cseq')!r} has no sequence number", self)
        return int(number), method.strip().upper()

    @property
    def branch(self) -> str:
        vias = self.get_all("via")
        return param(vias[0].split(",")[0], "branch") or "" if vias else ""

    @property
    def from_tag(self) -> str:
        return param(self.get("from") or "", "tag") or ""

    @property
    def to_tag(self) -> str:
        return param(self.get("to") or "", "tag") or ""


def parse(data: bytes) -> SipMessage:
    if len(data) > MAX_MESSAGE:
        raise SipParseError(f"message of {len(data)} bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    message = SipMessage()
    start = lines[0].strip()
    if m := _REQUEST_LINE.match(start):
        message.method, message.uri = m.group(1).upper(), m.group(2)
    elif m := _STATUS_LINE.match(start):
        message.status, message.reason = int(m.group(1)), m.group(2)
    else:
        raise SipParseError(f"not a SIP request or status line: {start[:80]!r}")
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and message.headers:  # folded continuation of the previous header
            name, value = message.headers[-1]
            message.headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or " " in name:
            raise SipParseError(f"malformed header line {line[:80]!r}", message)
        message.headers.append((_COMPACT.get(name, name), value.strip()))
    length = message.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise SipParseError(f"Content-Length {length!r} is not a number", message)
        if int(length) > len(body):
            raise SipParseError(f"Content-Length {length} but only {len(body)} body bytes", message)
        body = body[: int(length)]
    message.body = body
    return message


def missing_headers(message: SipMessage) -> list[str]:
    present = {n for n, _ in message.headers}
    missing = [h for h in REQUIRED if h not in present]
    if "cseq" not in missing:
        try:
            _ = message.cseq
        except SipParseError:
            missing.append("cseq (malformed)")
    return missing


def param(header: str, name: str) -> str | None:
    """A header parameter (`;tag=`, `;branch=`): those after the name-addr's `>`, or after the bare URI."""
    tail = header.rsplit(">", 1)[1] if "<" in header else header.partition(";")[2]
    for item in tail.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == name:
            return value.strip()
    return None


def uri_of(header: str) -> str:
    """The URI in a name-addr (`"Bob" <sip:bob@host>;tag=x`) or addr-spec (`sip:bob@host;tag=x`)."""
    if "<" in header and ">" in header:
        return header[header.index("<") + 1 : header.index(">")]
    return header.split(";")[0].strip()


def user_of(uri: str) -> str:
    """The user part of a sip:/sips:/tel: URI (`+15551234567`), '' if it has none."""
    scheme, _, rest = uri.partition(":")
    if scheme.lower() == "tel":
        return rest.split(";")[0]
    user, at, _ = rest.partition("@")
    return user.split(";")[0] if at else ""


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)  # the RFC 3261 magic cookie, then a unique part


def response(request: SipMessage, status: int, reason: str, to_tag: str = "",
             extra: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """A response to `request` (RFC 3261 §8.2.6): Via, From, Call-ID, CSeq copied; our tag added to To."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in request.get_all("via")]
    if 100 < status < 300:  # RFC 3261 §12.1.1: a dialog-creating response mirrors the proxies' Record-Route
        lines += [f"Record-Route: {v}" for v in request.get_all("record-route")]
    lines.append(f"From: {request.get('from')}")
    to = request.get("to") or ""
    if to_tag and status > 100 and param(to, "tag") is None:
        to = f"{to};tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.call_id}")
    lines.append(f"CSeq: {request.get('cseq')}")
    lines += [f"{name}: {value}" for name, value in extra or []]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {uri} SIP/2.0", *(f"{n}: {v}" for n, v in headers), f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
