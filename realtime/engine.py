"""Per-process engine: the loaded model stack, the stage threads, the tools and the live sessions.

Transports ask the engine for a session (`open_session`) and give it back (`close_session`); the engine enforces
capacity and keeps the last sessions' summaries for `/stats`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from models.interfaces import GenerationOptions, Message, ModelStack
from models.registry import load_stack
from models.threaded import stage_executor
from realtime import metrics
from realtime.config import Config, SessionConfig, with_session_overrides
from realtime.session import Session, TransportLink, voice_settings
from realtime.tools import ToolRegistry, default_tools

log = logging.getLogger(__name__)


class CapacityError(Exception):
    """No room for another session in this process; the caller answers 503 / SIP 486."""


class Engine:
    def __init__(self, config: Config, stack: ModelStack | None = None, tools: ToolRegistry | None = None) -> None:
        self.config = config
        self._stack = stack
        self.tools = tools or default_tools()
        self.vad_executor: ThreadPoolExecutor = stage_executor("vad")
        self.asr_executor: ThreadPoolExecutor = stage_executor("asr")
        self.tts_executor: ThreadPoolExecutor = stage_executor("tts")
        self.sessions: dict[str, Session] = {}
        self.recent_summaries: deque[dict[str, Any]] = deque(maxlen=50)
        self.started_at = time.time()
        self.load_seconds: float | None = None
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()

    @property
    def stack(self) -> ModelStack:
        if self._stack is None:
            raise RuntimeError("the model stack is not loaded yet")
        return self._stack

    @property
    def ready(self) -> bool:
        """Loaded *and* warm: a first call must not meet a cold LM prefix."""
        return self._ready.is_set()

    async def load(self) -> None:
        """Load and warm the stack off the event loop (seconds), once per process."""
        if self._stack is None:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(1, thread_name_prefix="parley-load") as pool:
                stack = await loop.run_in_executor(pool, load_stack, self.config)
                await loop.run_in_executor(pool, stack.warm_up)
            self._stack = stack
            await self._prefill_instructions()
            self.load_seconds = time.perf_counter() - t0
            log.info("stack %s loaded in %.1f s: %s", stack.name, self.load_seconds, stack.info)
        self._ready.set()

    async def _prefill_instructions(self) -> None:
        """One short generation with the default system prompt and tools, so local LMs cache that prefix.

        llama.cpp reuses the longest common prompt prefix; without this the first turn of the first call pays
        for prefilling ~300 tokens of instructions and tool schemas (~1.5 s on 2 cores).
        """
        s = self.config.session
        messages = [Message("system", s.instructions), Message("user", "Hello.")]
        options = GenerationOptions(max_tokens=1, temperature=0.0, tools=self.tools.specs if s.tools else ())
        try:
            async for _ in self.stack.lm.stream(messages, options):
                pass
        except Exception as exc:  # a remote LM that is not up yet must not stop the server from starting
            log.warning("LM warm-up failed (%s); the first turn will be slower", exc)

    def session_settings(self, overrides: dict[str, Any] | None, where: str = "session") -> SessionConfig:
        """The config's [session] with a client's overrides; raises ConfigError naming a bad key."""
        settings = with_session_overrides(self.config.session, overrides or {}, where)
        voice_settings(settings)  # a bad cloning sample is refused here, not at the first reply
        return settings

    def open_session(self, link: TransportLink, settings: SessionConfig) -> Session:
        if not self.ready:
            raise CapacityError("models are still loading")
        if len(self.sessions) >= self.config.server.max_sessions:
            raise CapacityError(f"this worker holds its maximum of {self.config.server.max_sessions} sessions")
        session_id = f"sess_{os.getpid()}_{next(self._ids)}_{uuid.uuid4().hex[:6]}"
        session = Session(session_id, self, settings, link)
        self.sessions[session_id] = session
        metrics.SESSIONS.labels(link.kind).inc()
        metrics.SESSIONS_TOTAL.labels(link.kind).inc()
        return session

    async def close_session(self, session: Session, reason: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        metrics.SESSIONS.labels(session.link.kind).dec()
        await session.close(reason)
        if session.summary is not None and reason != "setup_failed":
            self.recent_summaries.append(session.summary)
            metrics.observe_summary(session.summary)

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            await self.close_session(session, "server_shutdown")
        # Remote LMs hold an HTTP connection pool that must be closed on the loop that opened it.
        aclose = getattr(self._stack.lm, "aclose", None) if self._stack is not None else None
        if aclose is not None:
            await aclose()
        for pool in (self.vad_executor, self.asr_executor, self.tts_executor):
            pool.shutdown(wait=False, cancel_futures=True)
