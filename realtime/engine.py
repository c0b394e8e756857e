"""Per-process engine: the loaded model stack, the stage threads, the tools and the live sessions.

Transports ask the engine for a session (`open_session`) and give it back (`close_session`); the engine enforces
capacity and keeps the last sessions' summaries for `/stats`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from models.interfaces import GenerationOptions, Message, ModelStack
from models.priority_executor import PriorityExecutor
from models.registry import load_stack
from models.threaded import stage_executor
from models.warmup import WarmUpError, WarmUpReport, warm_up_audio_stages
from realtime import metrics
from realtime.config import Config, SessionConfig, with_session_overrides
from realtime.reclaim import Reclaimer
from realtime.session import Session, TransportLink, voice_settings
from realtime.tools import ToolRegistry, default_tools

log = logging.getLogger(__name__)


LM_RETRY_S = 2.0


class CapacityError(Exception):
    """No room for another session in this process; the caller answers 503 / SIP 486."""


class Engine:
    def __init__(self, config: Config, stack: ModelStack | None = None, tools: ToolRegistry | None = None) -> None:
        self.config = config
        self._stack = stack
        self.tools = tools or default_tools()
        self.vad_executor: ThreadPoolExecutor = stage_executor("vad")
        # Shared by every session; a caller's final pass goes before anyone's partial pass.
        self.asr_executor = PriorityExecutor("asr")
        self.tts_executor: ThreadPoolExecutor = stage_executor("tts")
        self.turn_executor: ThreadPoolExecutor = stage_executor("turn")  # semantic end-of-turn scores
        self.sessions: dict[str, Session] = {}
        self.recent_summaries: deque[dict[str, Any]] = deque(maxlen=50)
        self.started_at = time.time()
        self.load_seconds: float | None = None
        self._ready = asyncio.Event()
        self.not_ready_reason = "starting"
        # Set by SIGTERM (realtime/drain.py): live sessions go on, new ones are refused.
        self.draining = False
        self._idle = asyncio.Event()  # set whenever the last session closes
        self.warm_up: WarmUpReport | None = None
        self.reclaimer = Reclaimer()

    @property
    def stack(self) -> ModelStack:
        if self._stack is None:
            raise RuntimeError("the model stack is not loaded yet")
        return self._stack

    @property
    def ready(self) -> bool:
        """Loaded *and* warm: every stage ran once, the LM decoded with the real instructions."""
        return self._ready.is_set()

    async def load(self) -> None:
        """Load and warm the stack off the event loop (seconds), once per process.

        Raises WarmUpError (naming the stage, the model and the remedy) when a local model fails to load or to
        run. A remote LM that does not answer yet is waited for instead: `not_ready_reason` says so meanwhile.
        """
        if self._stack is None:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(1, thread_name_prefix="parley-load") as pool:
                self.not_ready_reason = f"loading the {self.config.models.stack} stack"
                try:
                    stack = await loop.run_in_executor(pool, load_stack, self.config)
                except WarmUpError:
                    raise
                except Exception as exc:
                    raise WarmUpError("stack", self.config.models.stack, f"{type(exc).__name__}: {exc}",
                                      what="failed to load") from exc
                self.not_ready_reason = "warming up VAD, TTS and ASR"
                report = await loop.run_in_executor(pool, warm_up_audio_stages, stack)
            self._stack = stack
            self.not_ready_reason = "warming up the LM"
            report.stage_ms["lm"] = await self._warm_up_lm()
            self.warm_up = report
            self.load_seconds = time.perf_counter() - t0
            log.info("stack %s loaded and warm in %.1f s (stage ms %s; ASR heard %r): %s", stack.name,
                     self.load_seconds, report.stage_ms, report.transcript, stack.info)
            self.reclaimer.freeze_startup()
        self.not_ready_reason = ""
        self._ready.set()

    async def _warm_up_lm(self) -> float:
        """One short generation with the default system prompt and tools; its time in ms.

        llama.cpp reuses the longest common prompt prefix, so this also spares the first turn of the first call
        prefilling ~300 tokens of instructions and tool schemas (~1.5 s on 2 cores).
        """
        s = self.config.session
        messages = [Message("system", s.instructions), Message("user", "Hello.")]
        options = GenerationOptions(max_tokens=1, temperature=0.0, tools=self.tools.specs if s.tools else ())
        name = str(self.stack.info.get("lm", self.stack.name))
        remote = bool(getattr(self.stack.lm, "remote", False))
        while True:
            t0 = time.perf_counter()
            try:
                async for _ in self.stack.lm.stream(messages, options):
                    pass
                return round((time.perf_counter() - t0) * 1000, 1)
            except Exception as exc:
                if not remote:
                    raise WarmUpError("lm", name, f"{type(exc).__name__}: {exc}") from exc
                # A remote LM server may start after Parley: not ready (503 on /readyz) until it answers.
                self.not_ready_reason = f"waiting for the LM server ({name}): {exc}"
                log.warning("LM warm-up failed (%s); retrying in %.0f s", exc, LM_RETRY_S)
                await asyncio.sleep(LM_RETRY_S)

    def session_settings(self, overrides: dict[str, Any] | None, where: str = "session") -> SessionConfig:
        """The config's [session] with a client's overrides; raises ConfigError naming a bad key."""
        settings = with_session_overrides(self.config.session, overrides or {}, where)
        voice_settings(settings)  # a bad cloning sample is refused here, not at the first reply
        return settings

    def refusal(self) -> str | None:
        """Why a new call would be refused now ("loading", "draining", "capacity"), or None if it is welcome."""
        if not self.ready:
            return "loading"
        if self.draining:
            return "draining"
        if len(self.sessions) >= self.config.server.max_sessions:
            return "capacity"
        return None

    def refusal_message(self, reason: str) -> str:
        return {
            "loading": "models are still loading",
            "draining": "this server is shutting down; retry and another one will take the call",
            "capacity": f"this worker holds its maximum of {self.config.server.max_sessions} sessions",
        }[reason]

    def open_session(self, link: TransportLink, settings: SessionConfig) -> Session:
        reason = self.refusal()
        if reason is not None:
            raise CapacityError(self.refusal_message(reason))
        # 128 random bits: an id cannot be guessed, so knowing one is a capability. The pid says which worker
        # holds the session (the events tap must reach that one).
        session_id = f"sess_{os.getpid()}_{secrets.token_hex(16)}"
        session = Session(session_id, self, settings, link)
        self.sessions[session_id] = session
        metrics.SESSIONS.labels(link.kind).inc()
        metrics.SESSIONS_TOTAL.labels(link.kind).inc()
        return session

    async def close_session(self, session: Session, reason: str) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        if not self.sessions:
            self._idle.set()
        metrics.SESSIONS.labels(session.link.kind).dec()
        await session.close(reason)
        self.reclaimer.session_closed()
        if session.summary is not None and reason != "setup_failed":
            self.recent_summaries.append(session.summary)
            metrics.observe_summary(session.summary)

    async def wait_idle(self) -> None:
        """Returns once no session is live."""
        while self.sessions:
            self._idle.clear()
            await self._idle.wait()

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            await self.close_session(session, "server_shutdown")
        self.reclaimer.cancel()
        # Remote LMs hold an HTTP connection pool that must be closed on the loop that opened it.
        aclose = getattr(self._stack.lm, "aclose", None) if self._stack is not None else None
        if aclose is not None:
            await aclose()
        for pool in (self.vad_executor, self.asr_executor, self.tts_executor, self.turn_executor):
            pool.shutdown(wait=False, cancel_futures=True)
