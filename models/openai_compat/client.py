"""An OpenAI-compatible chat-completions client as Parley's LanguageModel: how the LM scales past one machine.

Every draft and response is one streamed HTTP request (server-sent events). Closing the async iterator closes
the HTTP response, which drops the connection: vLLM aborts the request when its client disconnects, and
llama.cpp's server stops after the token in flight. That is how a discarded speculative draft stops costing
GPU time on the server.

Failures before the first token (refused connection, 5xx, 429, a server slow to start) are retried with backoff;
once a token has been yielded a failure is final, since replaying a stream would repeat words already spoken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import aiohttp

from models.interfaces import GenerationOptions, LMDelta, Message
from models.openai_compat.sse import DONE, SSEDecoder
from models.openai_compat.tool_calls import ToolCallAccumulator, may_be_text_call, parse_text_call
from realtime.config import OpenAIStackConfig

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_AUDIO_TAG = re.compile(r"<audio_\d+>")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


class LMServerError(RuntimeError):
    """The LM server failed in a way the caller should report; the message says what and where."""


class _Retryable(LMServerError):
    pass


def approx_tokens(text: str) -> int:
    """A server-independent token estimate: one per audio tag and per CJK character, ~4 characters otherwise."""
    tags = len(_AUDIO_TAG.findall(text))
    rest = _AUDIO_TAG.sub("", text)
    cjk = len(_CJK.findall(rest))
    other = len(_CJK.sub("", rest))
    return tags + cjk + (other + 3) // 4


def openai_message(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d


class OpenAILM:
    # The engine waits for a remote server at start-up instead of failing (realtime/engine.py).
    remote = True

    def __init__(self, config: OpenAIStackConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.name = config.model or "openai"
        self._model = config.model
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._model_lock: asyncio.Lock | None = None

    # --- LanguageModel --------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        # The server's tokenizer is a round trip away and this is called on the event loop: estimate.
        return approx_tokens(text)

    async def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[LMDelta]:
        cfg = self.config
        session = self._client()
        model = await self.model_name()
        body = self._body(model, messages, options)
        tools = {t.name for t in options.tools} if body.get("tools") else set()
        attempt = 0
        while True:
            yielded = False
            try:
                async with aclosing(self._one_stream(session, body, tools)) as deltas:
                    async for delta in deltas:
                        yielded = True
                        yield delta
                return
            except _Retryable as exc:
                if yielded or attempt >= cfg.retries:
                    raise LMServerError(str(exc)) from exc.__cause__
                attempt += 1
                delay = cfg.retry_backoff_s * (2 ** (attempt - 1))
                log.warning("LM request failed before its first token (%s); retry %d/%d in %.2f s",
                            exc, attempt, cfg.retries, delay)
                await asyncio.sleep(delay)

    # --- helpers ---------------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _timeout(self) -> aiohttp.ClientTimeout:
        cfg = self.config
        # sock_read bounds every wait for bytes: the time to the first token and every gap between tokens.
        return aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s, sock_connect=cfg.connect_timeout_s,
                                     sock_read=cfg.read_timeout_s)

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to the loop that made it; a process serves from one loop, tests may use several.
            connector = aiohttp.TCPConnector(limit=self.config.max_connections)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers(),
                                                  timeout=self._timeout())
            self._session_loop = loop
            self._model_lock = asyncio.Lock()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def model_name(self) -> str:
        """The configured model, else the first one the server lists (asked once)."""
        if self._model:
            return self._model
        session = self._client()
        assert self._model_lock is not None
        async with self._model_lock:
            if not self._model:
                url = f"{self.base_url}/models"
                for attempt in range(self.config.retries + 1):
                    try:
                        async with session.get(url) as r:
                            if r.status != 200:
                                raise LMServerError(f"the LM server answered {r.status} for GET {url}: "
                                                    f"{(await r.text())[:300]}")
                            data = await r.json(content_type=None)
                        break
                    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                        if attempt >= self.config.retries:
                            raise LMServerError(f"cannot reach the LM server at {url}: {exc or type(exc).__name__}; "
                                                "is it running? ([models.openai].base_url)") from exc
                        await asyncio.sleep(self.config.retry_backoff_s * (2 ** attempt))
                models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
                if not models or not isinstance(models[0], str):
                    raise LMServerError(f"the LM server at {url} lists no models; set [models.openai].model")
                self._model = models[0]
                self.name = self._model
        return self._model

    def _body(self, model: str, messages: Sequence[Message], options: GenerationOptions) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": model, "messages": [openai_message(m) for m in messages], "stream": True,
            "max_tokens": options.max_tokens, "temperature": options.temperature, "top_p": cfg.top_p,
        }
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        if options.tools and cfg.tools:
            body["tools"] = [t.as_openai() for t in options.tools]
            if options.tool_choice == "none":
                body["tool_choice"] = "none"
            elif cfg.tool_choice in ("auto", "required", "none"):
                body["tool_choice"] = cfg.tool_choice
            elif cfg.tool_choice:
                body["tool_choice"] = {"type": "function", "function": {"name": cfg.tool_choice}}
        body.update(cfg.extra_body)
        return body

    async def _one_stream(
        self, session: aiohttp.ClientSession, body: dict[str, Any], tools: set[str]
    ) -> AsyncGenerator[LMDelta, None]:
        url = f"{self.base_url}/chat/completions"
        try:
            response = await session.post(url, json=body)
        except aiohttp.ClientConnectorError as exc:
            raise _Retryable(f"cannot connect to the LM server at {self.base_url}: {exc.os_error or exc}; "
                             "is it running? ([models.openai].base_url)") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Retryable(f"cannot connect to the LM server at {self.base_url} within "
                             f"{self.config.connect_timeout_s:g} s") from exc
        except TimeoutError as exc:
            raise _Retryable(f"the LM server at {self.base_url} sent nothing for {self.config.read_timeout_s:g} s "
                             "before its first token") from exc
        except aiohttp.ClientConnectionError as exc:
            raise _Retryable(f"the LM server at {self.base_url} did not answer: {exc or type(exc).__name__}") from exc
        try:
            if response.status != 200:
                text = (await response.text())[:500]
                message = f"the LM server answered {response.status} for POST {url}: {text}"
                if response.status in RETRYABLE_STATUS:
                    raise _Retryable(message)
                raise LMServerError(message)
            async with aclosing(self._read(response, tools)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            # Closing (not releasing) drops the connection: the server sees the client go and stops generating.
            response.close()

    async def _read(self, response: aiohttp.ClientResponse, tools: set[str]) -> AsyncGenerator[LMDelta, None]:
        cfg = self.config
        decoder = SSEDecoder()
        calls = ToolCallAccumulator()
        watch_text = bool(tools) and cfg.text_tool_calls
        held = ""  # content held back while it may be a tool call written as text
        holding = watch_text
        got_any = False
        finished = False
        try:
            async for line in response.content:
                payload = decoder.feed(line)
                if payload is None:
                    continue
                if payload.strip() == DONE:
                    break
                try:
                    chunk = json.loads(payload)
                except json.JSONDecodeError as exc:
                    raise LMServerError(f"the LM server sent an event that is not JSON: {payload[:200]}") from exc
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise LMServerError(f"the LM server reported an error mid-stream: {chunk['error']}")
                for choice in chunk.get("choices") or []:
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta") or {}
                    if delta.get("tool_calls"):
                        calls.add(delta["tool_calls"])
                        got_any = True
                    text = delta.get("content")
                    if text:
                        got_any = True
                        if holding:
                            held += text
                            verdict = may_be_text_call(held)
                            if verdict is False:
                                holding = False
                                yield LMDelta(text=held)
                                held = ""
                        else:
                            yield LMDelta(text=text)
                    if choice.get("finish_reason") == "tool_calls" and calls:
                        finished = True
                if finished:
                    break
        except TimeoutError as exc:
            where = "mid-stream" if got_any else "before its first token"
            error = f"the LM server at {self.base_url} sent nothing for {cfg.read_timeout_s:g} s {where}"
            if got_any:
                raise LMServerError(error) from exc
            raise _Retryable(error) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if got_any:
                raise LMServerError(f"the LM server's stream broke off: {exc or type(exc).__name__}") from exc
            raise _Retryable(f"the LM server's stream broke off before its first token: {exc}") from exc
        found = calls.calls()
        if found:
            if held.strip():
                yield LMDelta(text=held)
            yield LMDelta(tool_call=found[0])
            return
        if held:
            call = parse_text_call(held, tools)
            yield LMDelta(tool_call=call) if call is not None else LMDelta(text=held)

    # --- a blocking request, for worker threads (Step-Audio transcripts through a remote chat model) ----------

    def complete_blocking(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> str:
        if not self._model:
            raise LMServerError("the model name is not known yet; set [models.openai].model")
        body = {"model": self._model, "messages": [openai_message(m) for m in messages], "stream": False,
                "max_tokens": max_tokens, "temperature": temperature, **self.config.extra_body}
        headers = {k: v for k, v in self._headers().items() if k != "Accept"}
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        timeout = self.config.connect_timeout_s + self.config.read_timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                data = json.loads(r.read())
        except (urllib.error.URLError, TimeoutError) as exc:
            raise LMServerError(f"transcript request to {self.base_url} failed: {exc}") from exc
        choices = data.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")
