"""Cross-origin calls from browsers: pages hosted elsewhere may start calls here, if their origin is listed.

OpenAI's browser flow posts the SDP offer from the developer's own page to the Realtime server, with a client
secret in `Authorization`: a cross-origin request with a preflight. `[server].cors_origins` lists the origins
allowed to; nothing else is opened (the event tap, /stats and /metrics stay same-origin), and an origin not listed
gets no CORS headers, so the browser refuses to hand it the answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

CALL_ENDPOINTS = frozenset({"/offer", "/v1/realtime/calls", "/v1/realtime/client_secrets"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(origins: list[str]) -> Middleware:
    allowed = frozenset(origins)

    def headers_for(origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": "*" if "*" in allowed else origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Expose-Headers": "Location",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN, "")
        listed = bool(origin) and ("*" in allowed or origin in allowed) and request.path in CALL_ENDPOINTS
        if request.method == "OPTIONS" and listed:
            return web.Response(status=204, headers=headers_for(origin))  # the preflight: before authentication
        response = await handler(request)
        if listed:
            response.headers.update(headers_for(origin))
        return response

    return cors
