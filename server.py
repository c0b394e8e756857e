"""Parley server: `python server.py [--config configs/default.toml] [--host H] [--port P] [--workers N]
[--allow-unauthenticated]`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys

from aiohttp import web

from realtime import auth
from realtime.config import Config, ConfigError, load_config, validate

log = logging.getLogger("parley")
STARTUP_FAILED = 3  # a model failed to load or warm up; the message says which and what to do


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="server.py", description="Parley real-time voice conversation server")
    p.add_argument("--config", default="configs/default.toml", help="TOML config (default: %(default)s)")
    p.add_argument("--host", help="listen address (overrides [server].host)")
    p.add_argument("--port", type=int, help="listen port (overrides [server].port)")
    p.add_argument("--workers", type=int, help="worker processes sharing the port; 0 = one per core")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve a non-loopback address without an API key (anyone who reaches it can call)")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    config = validate(load_config(args.config))
    server = config.server
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    if changes:
        config = dataclasses.replace(config, server=dataclasses.replace(server, **changes))
    host = config.server.host
    if not auth.api_key_from(config.server.api_key) and not args.allow_unauthenticated and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve {host!r} without an API key: anyone who reaches it could join calls and read "
            f"transcripts. Set {auth.API_KEY_ENV} (or [server].api_key), bind 127.0.0.1, or pass "
            "--allow-unauthenticated (see docs/SECURITY.md)")
    return config


def is_loopback(host: str) -> bool:
    """Every address `host` names is a loopback one (a wildcard such as 0.0.0.0 is not)."""
    try:
        infos = socket.getaddrinfo(host or None, None, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def serve(config: Config, worker: int, reuse_port: bool) -> None:
    """One worker process: its own event loop (uvloop), engine and models."""
    import uvloop

    from realtime.app import FAILURE, create_app

    logging.basicConfig(
        level=config.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [w{worker} %(process)d] %(name)s: %(message)s",
    )
    # aiortc/aioice log every ICE check at INFO; a voice server's log is for calls, not packets.
    for noisy in ("aioice", "aiortc", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # A native crash (a llama.cpp build that does not suit this CPU) then prints which Python call it was in.
    faulthandler.enable()
    app = create_app(config)
    log.info("Parley worker %d loading the %s stack on http://%s:%d (/healthz answers, /readyz is 503 until warm)",
             worker, config.models.stack, config.server.host, config.server.port)
    web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=reuse_port,
                print=None, handle_signals=True, shutdown_timeout=5,
                # aiohttp starts this timer when a connection opens and closes it if no whole request came by
                # then: the header timeout against slow-header clients, and the idle keep-alive limit.
                keepalive_timeout=config.server.header_timeout_s)
    if app[FAILURE]:
        print(f"parley: start-up failed: {app[FAILURE][0]}", file=sys.stderr)
        sys.exit(STARTUP_FAILED)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    workers = config.server.workers or os.cpu_count() or 1
    if workers == 1:
        serve(config, 0, reuse_port=False)
        return 0
    # Several processes share the port with SO_REUSEPORT; the kernel spreads new connections across them.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=serve, args=(config, i, True), name=f"parley-w{i}") for i in range(workers)]
    for proc in procs:
        proc.start()

    def stop(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # One worker whose models cannot start means none can: stop them all rather than serve at part capacity.
    pending = list(procs)
    while pending:
        multiprocessing.connection.wait([p.sentinel for p in pending])
        for proc in [p for p in pending if not p.is_alive()]:
            pending.remove(proc)
            if proc.exitcode == STARTUP_FAILED:
                stop(signal.SIGTERM, None)
    for proc in procs:
        proc.join()
    return max((p.exitcode or 0) for p in procs)


if __name__ == "__main__":
    raise SystemExit(main())
