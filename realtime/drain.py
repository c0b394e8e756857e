"""Graceful drain: SIGTERM stops new calls, lets live ones finish for up to `[server].drain_timeout_s`, then exits.

What a load balancer or Kubernetes expects of a backend being replaced: from the signal on, /readyz answers 503
(`"reason": "draining"`) so no new traffic is routed here, POST /offer answers 503 with Retry-After, a SIP INVITE
gets 503 and a Twilio stream is closed with 1013 (try again later); calls already up carry on untouched. When the
last one ends, or the timeout passes, the server stops as before (remaining calls get BYE / close). A second
SIGTERM, or SIGINT (Ctrl-C), stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from realtime.engine import Engine

log = logging.getLogger(__name__)


def _exit() -> None:
    # Raised from a loop callback, GracefulExit leaves run_app's loop the way aiohttp's own signal handler does.
    raise web.GracefulExit()


def install(engine: Engine) -> None:
    """Take over SIGTERM from aiohttp's handler (which stops at once); call inside the running loop."""
    loop = asyncio.get_running_loop()
    timeout = engine.config.server.drain_timeout_s
    tasks: list[asyncio.Task[None]] = []

    async def wait_then_exit() -> None:
        try:
            await asyncio.wait_for(engine.wait_idle(), timeout)
        except TimeoutError:
            pass
        if engine.sessions:
            log.warning("drain: %d calls still up after %.0f s; stopping them", len(engine.sessions), timeout)
        else:
            log.info("drain: no calls left; stopping")
        loop.call_soon(_exit)

    def on_sigterm() -> None:
        if engine.draining or timeout == 0:
            _exit()
        engine.draining = True
        log.info("SIGTERM: draining: new calls refused; %d live calls have up to %.0f s", len(engine.sessions),
                 timeout)
        tasks.append(asyncio.create_task(wait_then_exit(), name="drain"))

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # no signals off the main thread (an app under a test client)
        pass
