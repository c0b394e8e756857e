"""Who may use the server: the API key, short-lived client secrets, and the aiohttp middleware that checks them.

With no key configured everything stays open (loopback development; server.py refuses a non-loopback bind then).
With a key (`PARLEY_API_KEY`, or `[server].api_key`) every entry point except the page, its static files,
/healthz and /readyz needs `Authorization: Bearer <credential>`, checked before any body is read, any WebSocket is
upgraded or any peer connection exists:

    the API key          everything
    a client secret      one call within its lifetime (POST /offer, POST /v1/realtime/calls or the
                         /v1/realtime WebSocket; `POST /v1/realtime/client_secrets` mints it), for browsers, so
                         that the key itself never reaches one
    ?token=<credential>  instead of the header, under /telephony/ and /sessions/ only: phone providers and
                         browsers' WebSocket API cannot set headers

The event tap of one session (/sessions/{id}/events) also opens with that session's own `events_token` (returned by
POST /offer and GET /telephony/calls/{id}), with or without a key: a client sees its own call and no other.
Handlers tell how a request got in from `request[BY_API_KEY]`: only the key sees per-session detail in /stats.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

API_KEY_ENV = "PARLEY_API_KEY"
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz"})
PUBLIC_PREFIXES = ("/static/",)
# What a client secret opens (once): starting a call, nothing that reads other calls or the engine.
CALL_PATHS = frozenset({("POST", "/offer"), ("POST", "/v1/realtime/calls"), ("GET", "/v1/realtime")})
QUERY_TOKEN_PREFIXES = ("/telephony/", "/sessions/")
# Event taps: the handler accepts the API key or the session's own events_token.
TAP_PREFIX = "/sessions/"
BY_API_KEY = web.RequestKey("by_api_key", bool)
SECRETS_PATH = "/v1/realtime/client_secrets"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_key_from(configured: str) -> str:
    """The environment wins over the TOML, so a key need not be written into a file."""
    return os.environ.get(API_KEY_ENV, "") or configured


def unauthorized(message: str) -> web.Response:
    return web.json_response({"error": {"type": "invalid_api_key", "message": message}}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="parley"'})


@dataclass
class Credentials:
    """The API key, and client secrets signed with it.

    A client secret is `ek_<expiry>.<nonce>.<HMAC of both under the key>`: any worker process can verify it without
    shared state. Each process remembers the nonces it accepted until they expire, so a secret opens one call per
    worker; with `workers = 1` (the default) that is one call.
    """

    api_key: str
    secret_ttl_s: float = 60.0
    _used: dict[str, float] = field(default_factory=dict)  # nonce -> expiry (unix seconds)

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)

    def is_api_key(self, presented: str) -> bool:
        # Constant time: how long a refusal takes says nothing about how much of the key was right.
        return self.enabled and hmac.compare_digest(presented.encode(), self.api_key.encode())

    def _sign(self, body: str) -> str:
        return hmac.new(self.api_key.encode(), f"client-secret:{body}".encode(), hashlib.sha256).hexdigest()

    def mint(self, now: float | None = None) -> tuple[str, int]:
        expires_at = int((time.time() if now is None else now) + self.secret_ttl_s)
        body = f"{expires_at}.{secrets.token_hex(16)}"
        return f"ek_{body}.{self._sign(body)}", expires_at

    def redeem(self, presented: str, now: float | None = None) -> bool:
        """True once for a live secret this key signed; refused after use or expiry."""
        now = time.time() if now is None else now
        expiry, _, rest = presented.removeprefix("ek_").partition(".")
        nonce, _, mac = rest.partition(".")
        if not (presented.startswith("ek_") and expiry.isdigit() and nonce and mac):
            return False
        if not hmac.compare_digest(mac.encode(), self._sign(f"{expiry}.{nonce}").encode()):
            return False
        for old in [n for n, exp in self._used.items() if exp <= now]:
            del self._used[old]
        if int(expiry) <= now or nonce in self._used:
            return False
        self._used[nonce] = int(expiry)
        return True


def presented_credential(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.path.startswith(QUERY_TOKEN_PREFIXES):
        return request.query.get("token", "")
    return ""


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def matches(presented: str, expected: str) -> bool:
    """Constant-time equality of two credentials; an empty expected value matches nothing."""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


def middleware(credentials: Credentials) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[BY_API_KEY] = False
        if not credentials.enabled or is_public(request.path):
            return await handler(request)
        presented = presented_credential(request)
        if not presented:
            return unauthorized("this server needs 'Authorization: Bearer <API key or client secret>'")
        if credentials.is_api_key(presented):
            request[BY_API_KEY] = True
            return await handler(request)
        if request.path.startswith(TAP_PREFIX):
            return await handler(request)  # the tap checks the session's events_token itself
        if (request.method, request.path) in CALL_PATHS and credentials.redeem(presented):
            return await handler(request)
        return unauthorized("the credential is not this server's API key, or a client secret that is unused "
                            "and unexpired (client secrets open one call: POST /offer, POST /v1/realtime/calls, "
                            "GET /v1/realtime)")

    return authenticate


def add_routes(app: web.Application, credentials: Credentials,
               describe_session: Callable[[], dict[str, object]] = dict) -> None:
    async def client_secret(request: web.Request) -> web.Response:
        if not credentials.enabled:
            return web.json_response({"error": {"type": "invalid_request_error", "message":
                                      "no API key is configured (PARLEY_API_KEY): calls need no credential"}},
                                     status=400)
        value, expires_at = credentials.mint()
        # `session`: what a call opened with it gets (OpenAI's client-secret answer carries the same).
        return web.json_response({"value": value, "expires_at": expires_at, "session": describe_session()})

    app.router.add_post(SECRETS_PATH, client_secret)
