"""The HTTP surface: the web client, WebRTC signalling, health, stats and metrics.

    GET  /          the browser client (web/)
    POST /offer     {"sdp", "type": "offer", "session": {...overrides}}
                    -> {"sdp", "type": "answer", "session_id", "events_token"}
    GET  /healthz   liveness (200 while the process serves HTTP), with a `ready` field and the figures
    GET  /readyz    readiness: 200 once every model is loaded and warm, 503 (with the reason) before
    GET  /stats     aggregates; with the API key, live sessions and the last sessions' summaries
    GET  /sessions/{id}/events   WebSocket tap of one live session's events (any transport), with the API key
                    or that session's events_token
    GET  /metrics   Prometheus
    POST /v1/realtime/client_secrets   a one-call credential for a browser (with the API key; realtime/auth.py)
    GET  /v1/realtime   OpenAI Realtime (GA) WebSocket; POST /v1/realtime/calls: the same over WebRTC
                    (realtime/openai_realtime/)
    /telephony/...  phone calls, when [telephony] enables them (realtime/transports/twilio.py, sip.py)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.warmup import WarmUpError
from realtime import auth, cors, drain, httpanswers, metrics, ratelimit
from realtime.config import Config, ConfigError
from realtime.engine import Engine
from realtime.httpanswers import RETRY_AFTER_S, json_error
from realtime.openai_realtime import calls as realtime_calls
from realtime.openai_realtime import websocket as realtime_websocket
from realtime.openai_realtime.session_config import WireSettings, render
from realtime.transports import aiortc_tuning, ice, sip, twilio
from realtime.transports.webrtc import WebRTCCall

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
CALLS = web.AppKey("calls", set[WebRTCCall])
PROBE: web.AppKey[metrics.LoopLagProbe] = web.AppKey("probe", metrics.LoopLagProbe)
LOADER: web.AppKey[asyncio.Task[None]] = web.AppKey("loader", asyncio.Task)
# Set when the stack failed to load or warm up: server.py exits non-zero with it after the app stops.
FAILURE: web.AppKey[list[str]] = web.AppKey("failure", list)


async def offer(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    try:
        body = await request.json(loads=json.loads)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "request_too_large", f"the offer exceeds {engine.config.server.max_body_bytes} bytes")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, "invalid_json", "the request body is not valid JSON")
    if not isinstance(body, dict):
        return json_error(400, "invalid_request_error", "the request body must be a JSON object")
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer" or not isinstance(sdp, str) or not sdp.strip():
        return json_error(400, "invalid_request_error", "need {'sdp': <offer SDP string>, 'type': 'offer'}")
    overrides = body.get("session", {})
    if not isinstance(overrides, dict):
        return json_error(400, "invalid_request_error", "'session' must be an object of [session] overrides")
    try:
        settings = engine.session_settings(overrides)
    except ConfigError as exc:
        return json_error(400, "invalid_session", str(exc))
    started = await httpanswers.start_call(engine, lambda: WebRTCCall(engine, request.app[CALLS]), sdp, settings)
    if isinstance(started, web.Response):
        return started
    call, answer = started
    assert call.session is not None
    return web.json_response({"sdp": answer, "type": "answer", "session_id": call.session.id,
                              "events_token": call.session.events_token})


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    probe = request.app[PROBE]
    return web.json_response({
        "status": "ok" if engine.ready else "loading",
        "ready": engine.ready,
        "draining": engine.draining,
        "not_ready_reason": engine.not_ready_reason or None,
        "pid": os.getpid(),
        "stack": engine.stack.name if engine.ready else engine.config.models.stack,
        "sessions": len(engine.sessions),
        "max_sessions": engine.config.server.max_sessions,
        # Leak indicators: both return to their idle values when calls end, however they end.
        "peer_connections": len(request.app[CALLS]),
        "tasks": len(asyncio.all_tasks()),
        "load_seconds": engine.load_seconds,
        "uptime_s": round(time.time() - engine.started_at, 1),
        "event_loop_lag_max_ms": round(probe.max_ms, 2),
        "event_loop_lag_recent_max_ms": round(probe.recent_max_ms, 2),
        # Full collections after calls end (realtime/reclaim.py): how often, and how long each held the loop.
        "gc": engine.reclaimer.report(),
        "ice": ice.summary(engine.config.ice),
        "models": engine.stack.info if engine.ready else {},
        "warm_up_ms": engine.warm_up.stage_ms if engine.warm_up is not None else {},
    })


async def readyz(request: web.Request) -> web.Response:
    """For load balancers and Kubernetes readiness probes: 200 only when a call would be taken now."""
    engine = request.app[ENGINE]
    refusal = engine.refusal()
    if refusal is None:
        return web.json_response({"ready": True, "sessions": len(engine.sessions)})
    reason = {"loading": engine.not_ready_reason, "capacity": "at capacity"}.get(refusal, refusal)
    return web.json_response({"ready": False, "reason": reason}, status=503,
                             headers={"Retry-After": str(RETRY_AFTER_S)})


TOTALLED = ("responses", "drafts_started", "drafts_committed", "drafts_discarded", "barge_ins", "tokens_total",
            "tokens_wasted")


async def stats(request: web.Request) -> web.Response:
    """Per-session detail for the API key only; anyone else (loopback, no key configured) gets aggregates, so a
    second local client learns no session id and nothing of another caller's call."""
    engine = request.app[ENGINE]
    if request[auth.BY_API_KEY]:
        live = [{"id": s.id, "transport": s.link.kind, "state": s.controller.state.value,
                 **s.controller.stats.summary()} for s in engine.sessions.values()]
        return web.json_response({"pid": os.getpid(), "live": live, "recent": list(engine.recent_summaries)})
    by_transport: dict[str, int] = {}
    for s in engine.sessions.values():
        by_transport[s.link.kind] = by_transport.get(s.link.kind, 0) + 1
    recent = list(engine.recent_summaries)
    totals = {k: sum(int(r.get(k) or 0) for r in recent) for k in TOTALLED}
    started = totals["drafts_started"]
    return web.json_response({
        "pid": os.getpid(), "live_sessions": len(engine.sessions), "live_by_transport": by_transport,
        "recent_sessions": len(recent), "recent_totals": totals,
        "recent_commit_rate": round(totals["drafts_committed"] / started, 3) if started else None,
        "detail": "per-session detail needs the API key (PARLEY_API_KEY, docs/SECURITY.md)",
    })


async def session_events(request: web.Request) -> web.StreamResponse:
    """WebSocket event tap: every event of one live session, whatever transport carries it."""
    engine = request.app[ENGINE]
    session = engine.sessions.get(request.match_info["session_id"])
    if not request[auth.BY_API_KEY]:
        # Unknown session and wrong token answer alike: the refusal says nothing of which calls exist.
        presented = auth.presented_credential(request)
        if session is None or not auth.matches(presented, session.events_token):
            return json_error(401, "invalid_events_token", "the event tap needs this session's events_token "
                              "(from the POST /offer answer) as 'Authorization: Bearer <token>' or ?token=")
    if session is None:
        return json_error(404, "not_found", "no live session with that id in this worker")
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    queue = session.subscribe()
    try:
        while (event := await queue.get()) is not None:
            await ws.send_json(event)
    except ConnectionResetError:
        pass  # the client closed its tap while events were on the way: theirs to close, not an error
    finally:
        session.unsubscribe(queue)
        await ws.close()
    return ws


async def prometheus(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def create_app(config: Config, engine: Engine | None = None) -> web.Application:
    ice.install(config.ice)
    aiortc_tuning.install()
    credentials = auth.Credentials(auth.api_key_from(config.server.api_key), config.server.client_secret_ttl_s)
    buckets = ratelimit.TokenBuckets(config.server.rate_limit_per_minute, config.server.rate_limit_burst)
    # Rate limits first: refusing a flood must not cost a key comparison, and guessing keys is a flood too.
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[cors.middleware(config.server.cors_origins), ratelimit.middleware(buckets),
                                       auth.middleware(credentials)])
    app[ENGINE] = engine or Engine(config)
    calls: set[WebRTCCall] = set()
    app[CALLS] = calls
    app[PROBE] = metrics.LoopLagProbe()
    app[FAILURE] = []
    app.router.add_get("/", index)
    app.router.add_static("/static/", WEB_DIR, show_index=False)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/sessions/{session_id}/events", session_events)
    app.router.add_get("/metrics", prometheus)
    auth.add_routes(app, credentials, lambda: render("", WireSettings(), config.session))
    realtime_websocket.add_routes(app, app[ENGINE])
    realtime_calls.add_routes(app, app[ENGINE], calls)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    if config.telephony.twilio:
        twilio.add_routes(app, app[ENGINE])
    if config.telephony.sip:
        sip.add_server(app, app[ENGINE])
    return app


async def _startup(app: web.Application) -> None:
    app[PROBE].start()
    engine = app[ENGINE]

    async def load() -> None:
        try:
            await engine.load()
        except Exception as exc:
            message = str(exc) if isinstance(exc, WarmUpError) else f"loading the {engine.config.models.stack} stack " \
                f"failed: {type(exc).__name__}: {exc}"
            log.critical("%s", message, exc_info=not isinstance(exc, WarmUpError))
            app[FAILURE].append(message)
            # Stop the whole server: a process manager restarts it, and no caller meets a dead model.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # Building the models holds the GIL for up to ~0.2 s at a time, before any call can exist; the lag
        # figures /healthz reports are those calls could have suffered.
        app[PROBE].reset()
        server = engine.config.server
        log.info("Parley ready: listening on http://%s:%d (stack: %s)", server.host, server.port, engine.stack.name)

    # Answer /healthz at once (alive, "loading") and /readyz 503 until warm: a process manager can tell starting
    # from stuck, and a load balancer sends no call before the models have run once.
    app[LOADER] = asyncio.create_task(load(), name="load-stack")
    drain.install(engine)


async def _shutdown(app: web.Application) -> None:
    calls: set[WebRTCCall] = app[CALLS]
    for call in list(calls):
        await call.close("server_shutdown")
    await app[ENGINE].shutdown()
    await app[PROBE].stop()
