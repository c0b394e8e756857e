"""Drive a synchronous generator from asyncio without blocking the event loop.

Local models (llama.cpp, TTS, Step-Audio in torch) produce their output from blocking code. Each `next()` runs on
a stage's own executor thread, so one stage's slow call never queues behind another stage's. Closing the async
iterator (a cancelled task, `aclose()`) stops asking for items and then closes the generator on that same thread,
after the step in flight: when the `async for` has unwound, the model has stopped working.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def stage_executor(name: str) -> ThreadPoolExecutor:
    """One thread per model stage: the stage's calls run in order and never compete with each other."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parley-{name}")


async def iterate_in_thread(gen: Iterator[T], executor: Executor, interrupt: Callable[[], None] | None = None
                            ) -> AsyncGenerator[T, None]:
    """`gen` stepped on `executor`. Closed early (cancelled), it is closed on its thread after the step in flight;
    `interrupt`, if given, is called first (from the event loop) to cut that step short."""
    loop = asyncio.get_running_loop()
    exhausted = False
    try:
        while True:
            item = await loop.run_in_executor(executor, next, gen, _DONE)
            if item is _DONE:
                exhausted = True
                return
            yield item  # type: ignore[misc]
    finally:
        if not exhausted and interrupt is not None:
            interrupt()
        close = getattr(gen, "close", None)
        if close is not None:
            # Shielded: a second cancellation must not leave the generator open on its thread.
            await asyncio.shield(loop.run_in_executor(executor, close))
