"""The OpenAI-compatible LM backend against a real server: llama-cpp-python's server with the embedded Qwen GGUF.

The server runs as a subprocess on loopback (run pytest inside `unshare -n`, as ./parley.sh test does). It uses
the GGUF's chat template, as a llama.cpp deployment would; the tool-call test uses a second server with the
`chatml-function-calling` format, whose handler streams real OpenAI `delta.tool_calls` fragments when a function
is forced. The framing and accumulation rules are also
tested without a socket, and the retry/timeout paths against small local servers that misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from models.assets import MissingModelError, model_path
from models.interfaces import GenerationOptions, LMDelta, Message
from models.openai_compat.client import LMServerError, OpenAILM, approx_tokens
from models.openai_compat.sse import SSEDecoder, chunks
from models.openai_compat.tool_calls import ToolCallAccumulator, may_be_text_call, parse_text_call
from realtime.config import OpenAIStackConfig
from realtime.tools import default_tools
from tests.conftest import free_port

SYSTEM = "You are a helpful voice assistant. Answer briefly."


def gguf() -> Path:
    try:
        return model_path("qwen2.5-0.5b") / "model.gguf"
    except MissingModelError as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def llama_server(log_path: Path, chat_format: str | None = None, threads: int = 2) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; yields its /v1 base URL."""
    port = free_port()
    cmd = [sys.executable, "-u", "-m", "llama_cpp.server", "--model", str(gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads)]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            # Passive OpenMP waits: spinning threads starve whatever else shares the cores.
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/models", timeout=1) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start in 120 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The GGUF's own chat template: how a llama.cpp deployment serves chat."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_server(log) as base:
        yield base, log


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's function-calling format, whose handler streams OpenAI `delta.tool_calls`."""
    log = tmp_path_factory.mktemp("llama-tool-server") / "server.log"
    with llama_server(log, chat_format="chatml-function-calling") as base:
        yield base


def lm_for(base: str, **overrides: object) -> OpenAILM:
    return OpenAILM(replace(OpenAIStackConfig(base_url=base, read_timeout_s=60.0), **overrides))  # type: ignore[arg-type]


def ask(text: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", text)]


# --- against the real server ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_streams_a_reply_token_by_token(server: tuple[str, Path]) -> None:
    base, _ = server
    lm = lm_for(base)
    async for _ in lm.stream(ask("Hi."), GenerationOptions(max_tokens=1)):  # page the model in: measure warm
        pass
    t0 = time.perf_counter()
    first: float | None = None
    deltas: list[LMDelta] = []
    async for delta in lm.stream(ask("Name three colours."), GenerationOptions(max_tokens=40, temperature=0.0)):
        if first is None:
            first = time.perf_counter() - t0
        deltas.append(delta)
    total = time.perf_counter() - t0
    await lm.aclose()
    text = "".join(d.text for d in deltas)
    assert len(deltas) >= 3, deltas  # streamed, not one blob
    assert text.strip()
    assert lm.name.endswith("model.gguf")  # resolved from /v1/models
    assert first is not None and first < 30
    print(f"\n[openai-backend] TTFT {first * 1000:.0f} ms, {len(deltas)} deltas in {total * 1000:.0f} ms: {text!r}")


@pytest.mark.timeout(120)
async def test_closing_the_stream_stops_the_server(server: tuple[str, Path]) -> None:
    base, log = server
    lm = lm_for(base)
    before = log.read_text().count("Disconnected from client")
    stream = lm.stream([Message("user", "Write a long story about a dragon who learns to bake bread.")],
                       GenerationOptions(max_tokens=400, temperature=0.0))
    got = []
    async for delta in stream:
        got.append(delta.text)
        if len(got) >= 5:
            break
    assert len(got) == 5, f"the reply ended early: {got}"
    t_close = time.perf_counter()
    await stream.aclose()  # type: ignore[attr-defined]
    stopped_at = None
    while time.perf_counter() - t_close < 10:
        if log.read_text().count("Disconnected from client") > before:
            stopped_at = time.perf_counter()
            break
        await asyncio.sleep(0.005)
    assert stopped_at is not None, "the server never noticed the client went away"
    stop_ms = (stopped_at - t_close) * 1000
    # The server is free again: a new request is answered at once (it would queue behind 400 tokens otherwise).
    t1 = time.perf_counter()
    first_ms = None
    async for _ in lm.stream(ask("Say OK."), GenerationOptions(max_tokens=5, temperature=0.0)):
        first_ms = (time.perf_counter() - t1) * 1000
        break
    await lm.aclose()
    assert first_ms is not None
    print(f"\n[openai-backend] cancel-to-stop {stop_ms:.0f} ms (server log); next request TTFT {first_ms:.0f} ms")
    assert stop_ms < 5000


@pytest.mark.timeout(180)
async def test_a_tool_call_in_openai_format(tool_server: str) -> None:
    base = tool_server
    lm = lm_for(base, tool_choice="get_current_time")
    options = GenerationOptions(max_tokens=60, temperature=0.0, tools=default_tools().specs)
    messages = [Message("system", SYSTEM), Message("user", "What time is it in Tokyo right now?")]
    deltas = [d async for d in lm.stream(messages, options)]
    await lm.aclose()
    calls = [d.tool_call for d in deltas if d.tool_call is not None]
    assert len(calls) == 1, deltas
    call = calls[0]
    assert call.name == "get_current_time"
    assert call.id
    assert isinstance(call.arguments, dict)
    print(f"\n[openai-backend] tool call {call.name}({call.arguments}) id={call.id}")


# --- failures: clear errors, retries only before the first token ----------------------------------------------


@pytest.mark.timeout(30)
async def test_refused_connection_is_retried_then_named() -> None:
    port = free_port()  # nothing listens here
    lm = OpenAILM(OpenAIStackConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=2,
                                    retry_backoff_s=0.01, connect_timeout_s=1.0))
    t0 = time.perf_counter()
    with pytest.raises(LMServerError, match=r"cannot connect to the LM server .*is it running"):
        async for _ in lm.stream(ask("hi"), GenerationOptions()):
            pass
    await lm.aclose()
    assert time.perf_counter() - t0 < 10


class FlakyServer:
    """Answers 503 `fail` times, then streams a fixed reply; or accepts and never answers (`silent`)."""

    def __init__(self, fail: int = 0, silent: bool = False, die_after_first: bool = False) -> None:
        self.fail = fail
        self.silent = silent
        self.die_after_first = die_after_first
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.silent:
                await reader.read()  # until the client gives up and closes
                return
            if self.requests <= self.fail:
                body = b'{"error": "loading"}'
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return
            # Chunked, as real servers stream: a connection cut mid-body is then a detectable error.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            events = [b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % w.encode()
                      for w in ("Hello", " there", ".")] + [b"data: [DONE]\n\n"]
            for i, event in enumerate(events):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                if self.die_after_first and i == 0:
                    await asyncio.sleep(0.05)
                    writer.transport.abort()
                    return
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()  # one request per connection: a retry must open a new one


@contextlib.asynccontextmanager
async def serve(fake: FlakyServer):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


@pytest.mark.timeout(30)
async def test_503_before_the_first_token_is_retried() -> None:
    fake = FlakyServer(fail=2)
    async with serve(fake) as base:
        lm = OpenAILM(OpenAIStackConfig(base_url=base, model="m", retries=2, retry_backoff_s=0.01))
        text = "".join([d.text async for d in lm.stream(ask("hi"), GenerationOptions())])
        await lm.aclose()
    assert text == "Hello there."
    assert fake.requests == 3


@pytest.mark.timeout(30)
async def test_a_stream_that_spoke_is_never_replayed() -> None:
    fake = FlakyServer(die_after_first=True)
    async with serve(fake) as base:
        lm = OpenAILM(OpenAIStackConfig(base_url=base, model="m", retries=3, retry_backoff_s=0.01))
        got = []
        with pytest.raises(LMServerError, match="broke off"):
            async for d in lm.stream(ask("hi"), GenerationOptions()):
                got.append(d.text)
        await lm.aclose()
    assert got == ["Hello"]
    assert fake.requests == 1


@pytest.mark.timeout(30)
async def test_silence_is_a_read_timeout() -> None:
    fake = FlakyServer(silent=True)
    async with serve(fake) as base:
        lm = OpenAILM(OpenAIStackConfig(base_url=base, model="m", retries=1, retry_backoff_s=0.01,
                                        read_timeout_s=0.3))
        t0 = time.perf_counter()
        with pytest.raises(LMServerError, match=r"sent nothing for 0.3 s before its first token"):
            async for _ in lm.stream(ask("hi"), GenerationOptions()):
                pass
        await lm.aclose()
    assert fake.requests == 2
    assert time.perf_counter() - t0 < 5


# --- pure rules -------------------------------------------------------------------------------------------------


def test_sse_framing() -> None:
    d = SSEDecoder()
    lines = [b": keep-alive\n", b'data: {"a": 1}\r\n', b"\n", b"data: {\"b\":\n", b"data: 2}\n", b"\n",
             b"data: [DONE]\n", b"\n", b'data: {"c": 3}\n']
    payloads = [p for p in (d.feed(line) for line in lines) if p is not None]
    assert list(chunks(iter(payloads))) == [{"a": 1}, {"b": 2}]
    assert d.close() == '{"c": 3}'


def test_tool_call_fragments_openai_and_llama_cpp_styles() -> None:
    openai = ToolCallAccumulator()
    openai.add([{"index": 0, "id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": ""}}])
    openai.add([{"index": 0, "function": {"arguments": '{"expr'}}])
    openai.add([{"index": 0, "function": {"arguments": 'ession": "2+2"}'}}])
    (call,) = openai.calls()
    assert (call.id, call.name, call.arguments) == ("call_1", "calculate", {"expression": "2+2"})

    llama = ToolCallAccumulator()  # llama.cpp repeats id and name in every fragment
    for piece in ('{"', "timezone", '": "', "UTC", '"}', ""):
        llama.add([{"index": 0, "id": "call_x", "type": "function",
                    "function": {"name": "get_current_time", "arguments": piece}}])
    (call,) = llama.calls()
    assert call.name == "get_current_time" and call.arguments == {"timezone": "UTC"}


def test_tool_call_written_as_text() -> None:
    known = {"calculate"}
    assert may_be_text_call("  ") is None
    assert may_be_text_call("<tool") is None
    assert may_be_text_call("<tool_call>") is True
    assert may_be_text_call('{"name"') is True
    assert may_be_text_call("Sure") is False
    call = parse_text_call('<tool_call>\n{"name": "calculate", "arguments": {"expression": "1+1"}}\n</tool_call>',
                           known)
    assert call is not None and call.arguments == {"expression": "1+1"}
    call = parse_text_call('{"name": "calculate", "arguments": "{\\"expression\\": \\"3\\"}"}', known)
    assert call is not None and call.arguments == {"expression": "3"}
    assert parse_text_call('{"name": "rm_rf", "arguments": {}}', known) is None
    assert parse_text_call("{not json", known) is None


def test_token_estimate() -> None:
    assert approx_tokens("<audio_1><audio_1030>") == 2
    assert approx_tokens("你好") == 2
    assert approx_tokens("hello world!") == 3
