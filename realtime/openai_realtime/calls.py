"""POST /v1/realtime/calls: OpenAI Realtime over WebRTC, on Parley's own WebRTC call.

    body application/sdp (the offer), or multipart/form-data with an `sdp` part and a `session` part (a GA
    session object as JSON)  ->  201, the SDP answer (application/sdp), Location: /v1/realtime/calls/{call_id}
    POST /v1/realtime/calls/{call_id}/hangup  ends the call

Audio travels on the media track both ways; events on the `oai-events` data channel the client opens.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from realtime import httpanswers
from realtime.config import ConfigError
from realtime.httpanswers import json_error
from realtime.openai_realtime.protocol import RealtimeProtocol
from realtime.openai_realtime.session_config import SessionUpdateError, WireSettings, parse_update
from realtime.openai_realtime.websocket import wants_extensions
from realtime.transports.webrtc import WebRTCCall

if TYPE_CHECKING:
    from realtime.engine import Engine
    from realtime.session import Session

log = logging.getLogger(__name__)

ROUTE = "/v1/realtime/calls"
CHANNEL = "oai-events"


class RealtimeCall(WebRTCCall):
    def __init__(self, engine: Engine, registry: set[WebRTCCall], wire: WireSettings, extensions: bool) -> None:
        super().__init__(engine, registry, channel_label=CHANNEL)
        self.protocol = RealtimeProtocol(self.send_wire, audio_in_events=False,
                                         extensions=extensions, wire=wire)
        self.codec = self.protocol

    def on_session(self, session: Session) -> None:
        self.protocol.attach(session)


async def read_offer(request: web.Request) -> tuple[str, Any]:
    """(SDP, session object or None) from either body shape; raises ValueError with the reason."""
    if request.content_type.startswith("multipart/"):
        sdp, session = "", None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name
            text = (await part.read(decode=True)).decode("utf-8", "replace")
            if name == "sdp":
                sdp = text
            elif name == "session":
                try:
                    session = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"the 'session' part is not valid JSON: {exc}") from None
        return sdp, session
    return await request.text(), None


def add_routes(app: web.Application, engine: Engine, registry: set[WebRTCCall]) -> None:
    async def create(request: web.Request) -> web.StreamResponse:
        try:
            sdp, session_object = await read_offer(request)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "request_too_large", "the offer is too large")
        except (ValueError, UnicodeDecodeError) as exc:
            return json_error(400, "invalid_request_error", str(exc))
        if not sdp.strip().startswith("v="):
            return json_error(400, "invalid_request_error", "the body must be an SDP offer (application/sdp), or "
                              "multipart/form-data with 'sdp' and 'session' parts")
        wire = WireSettings(model=request.query.get("model", "parley"))
        overrides: dict[str, Any] = {}
        if session_object is not None:
            try:
                overrides, wire = parse_update(session_object, wire, engine.config.session)
            except SessionUpdateError as exc:
                return json_error(400, "invalid_request_error", f"{exc.param}: {exc}")
        try:
            settings = engine.session_settings(overrides)
        except ConfigError as exc:
            return json_error(400, "invalid_request_error", str(exc))
        extensions = wants_extensions(request)
        started = await httpanswers.start_call(engine, lambda: RealtimeCall(engine, registry, wire, extensions), sdp,
                                               settings)
        if isinstance(started, web.Response):
            return started
        call, answer = started
        assert call.session is not None
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"{ROUTE}/{call.session.id}"})

    async def hangup(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        call = next((c for c in registry if c.session is not None and c.session.id == call_id), None)
        if call is None:
            return json_error(404, "not_found", "no live call with that id in this worker")
        await call.close("hangup")
        return web.Response(status=200)

    app.router.add_post(ROUTE, create)
    app.router.add_post(ROUTE + "/{call_id}/hangup", hangup)
