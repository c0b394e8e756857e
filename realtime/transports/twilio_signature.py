"""Twilio's request signature (X-Twilio-Signature), so only Twilio can fetch the TwiML that starts a call.

Twilio signs each webhook with HMAC-SHA1 under the account's auth token, over the full URL it requested followed by
every POST parameter as name+value, sorted by name, base64-encoded
(https://www.twilio.com/docs/usage/security#validating-requests). It is not consistent about an explicit default
port in that URL, so like Twilio's own helper library both forms are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80}


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    payload = url + "".join(name + value for name, value in sorted(params, key=lambda p: (p[0], p[1])))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def url_forms(url: str) -> list[str]:
    """`url` without and with its scheme's default port."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    port = parts.port or default
    bare = prefix + host if port == default else f"{prefix}{host}:{port}"
    with_port = f"{prefix}{host}:{port}" if port else prefix + host
    return list(dict.fromkeys(urlunsplit(parts._replace(netloc=n)) for n in (bare, with_port)))


def is_valid(auth_token: str, url: str, params: Iterable[tuple[str, str]], presented: str) -> bool:
    if not auth_token or not presented:
        return False
    items = list(params)
    return any(hmac.compare_digest(signature(auth_token, form, items).encode(), presented.encode())
               for form in url_forms(url))
