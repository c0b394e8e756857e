"""The HTTP answers every call-starting endpoint shares (POST /offer, POST /v1/realtime/calls, GET /v1/realtime).

Every error body is `{"error": {"type", "message"}}`; a call refused for want of room (loading, draining, full)
is a 503 with `Retry-After`, counted in `parley_rejected_total`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from realtime import metrics
from realtime.config import SessionConfig
from realtime.engine import CapacityError
from realtime.transports.webrtc import OfferError, WebRTCCall

if TYPE_CHECKING:
    from realtime.engine import Engine

RETRY_AFTER_S = 2
Call = TypeVar("Call", bound=WebRTCCall)


def json_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status, headers=headers)


def refused(engine: Engine) -> web.Response | None:
    """The 503 a new call gets now (models loading, draining, at capacity), or None if it is welcome."""
    reason = engine.refusal()
    if reason is None:
        return None
    metrics.REJECTED.labels(reason).inc()
    return json_error(503, reason, engine.refusal_message(reason), {"Retry-After": str(RETRY_AFTER_S)})


async def start_call(engine: Engine, make_call: Callable[[], Call], offer_sdp: str, settings: SessionConfig
                     ) -> tuple[Call, str] | web.Response:
    """A new call and its SDP answer, or the error response (503 no room, 400 bad offer); a failed call is closed.

    The call is made only once the engine would take it: a refused offer costs no peer connection.
    """
    refusal = refused(engine)
    if refusal is not None:
        return refusal
    call = make_call()
    try:
        return call, await call.accept(offer_sdp, settings)
    except OfferError as exc:
        return json_error(400, "invalid_sdp", str(exc))
    except CapacityError as exc:
        metrics.REJECTED.labels("capacity").inc()
        return json_error(503, "capacity", str(exc), {"Retry-After": str(RETRY_AFTER_S)})
