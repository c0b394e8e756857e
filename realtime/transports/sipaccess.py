"""Who may place a SIP call: a source-address allow-list, and optional digest authentication of INVITEs.

    sip_allowed_sources   CIDR networks whose requests are served (default loopback only); others get 403
    sip_digest_user/...   when set, an INVITE needs `Authorization: Digest` (RFC 3261 §22.4, RFC 2617 MD5 with
                          qop=auth or without qop, as SIP trunks and SIPp send it); without one it gets a 401
                          challenge

Nonces are stateless, `<unix time>.<HMAC of it under a per-process secret>`, valid for NONCE_TTL_S: any
retransmission or a second INVITE inside the window verifies without a table of issued nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable

REALM = "parley"
NONCE_TTL_S = 60
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SourceFilter:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self.networks)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def digest_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}


class DigestAuth:
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self._secret = secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self.user and self.password)

    def nonce(self, now: float | None = None) -> str:
        stamp = str(int(time.time() if now is None else now))
        return f"{stamp}.{hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]}"

    def challenge(self) -> str:
        return f'Digest realm="{REALM}", nonce="{self.nonce()}", algorithm=MD5, qop="auth"'

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        stamp, _, mac = nonce.partition(".")
        if not stamp.isdigit():
            return False
        expected = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return hmac.compare_digest(mac.encode(), expected.encode()) and 0 <= now - int(stamp) <= NONCE_TTL_S

    def verify(self, method: str, authorization: str, now: float | None = None) -> bool:
        p = digest_params(authorization)
        now = time.time() if now is None else now
        if not p or p.get("algorithm", "MD5").upper() != "MD5" or p.get("realm") != REALM:
            return False
        if not hmac.compare_digest(p.get("username", "").encode(), self.user.encode()):
            return False
        if not self._nonce_fresh(p.get("nonce", ""), now):
            return False
        ha1 = _md5(f"{self.user}:{REALM}:{self.password}")
        ha2 = _md5(f"{method}:{p.get('uri', '')}")
        if p.get("qop"):
            if p["qop"] != "auth":
                return False
            expected = _md5(f"{ha1}:{p['nonce']}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        return hmac.compare_digest(p.get("response", "").lower().encode(), expected.encode())
