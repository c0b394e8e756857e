"""Per-client-address rate limits on what is costly to start: POST /offer and WebSocket connects.

A token bucket per address: `burst` requests at once, refilled at `per_minute`. Beyond it the request gets 429 with
Retry-After before any body is read or any peer connection exists. Behind a reverse proxy every client shares the
proxy's address: limit there instead, or raise these (docs/SECURITY.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIMITED_POSTS = frozenset({"/offer", "/v1/realtime/client_secrets", "/v1/realtime/calls"})
# Past this many tracked addresses, the full buckets (addresses quiet for a while) are forgotten.
MAX_TRACKED = 10_000


@dataclass
class TokenBuckets:
    per_minute: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # address -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0 and self.burst > 0

    def take(self, address: str, now: float | None = None) -> float:
        """0 if `address` may go ahead (one token taken), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_TRACKED:
                self._forget_full(now)
            return 0.0
        self._buckets[address] = (tokens, now)
        return (1.0 - tokens) / rate

    def _forget_full(self, now: float) -> None:
        rate = self.per_minute / 60.0
        for address, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate >= self.burst:
                del self._buckets[address]


def is_limited(request: web.Request) -> bool:
    if request.method == "POST" and request.path in LIMITED_POSTS:
        return True
    return request.method == "GET" and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def middleware(buckets: TokenBuckets) -> Middleware:
    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if buckets.enabled and is_limited(request):
            wait = buckets.take(request.remote or "")
            if wait > 0:
                retry = max(1, math.ceil(wait))
                return web.json_response(
                    {"error": {"type": "rate_limited", "message": f"too many calls from {request.remote}: "
                               f"at most {buckets.burst} at once and {buckets.per_minute:g} a minute; retry in "
                               f"{retry} s"}}, status=429, headers={"Retry-After": str(retry)})
        return await handler(request)

    return limit
