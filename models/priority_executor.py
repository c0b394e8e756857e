"""One worker thread that runs the most urgent waiting call first.

The ASR stage is shared by every session of a process and its calls are not equally urgent: the final pass of a
caller who has stopped speaking is on that caller's critical path, while a partial pass (the live transcript of
someone still talking) can wait. A FIFO thread makes the final pass queue behind partial passes of every caller;
here it goes first. Calls of the same priority run in the order they were submitted. A call already running
cannot be taken off the thread, but it can be told to stop early: a call submitted with `preempt` has that hook
called (from the submitting thread, so it must only set a flag) when a more urgent call arrives while it runs,
so one session's final pass does not wait for another session's partial pass to finish.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

URGENT = 0  # someone is waiting for this result now
BACKGROUND = 10  # work done ahead of time; nobody waits for it yet


class PriorityExecutor(Executor):
    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any],
                               Callable[[], None] | None]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._running: tuple[int, Callable[[], None] | None] | None = None  # priority and preempt hook

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Plain `submit` (and so `loop.run_in_executor`) is urgent."""
        return self.submit_at(URGENT, fn, *args, **kwargs)

    def submit_at(self, priority: int, fn: Callable[..., T], /, *args: Any,
                  preempt: Callable[[], None] | None = None, **kwargs: Any) -> Future[T]:
        """Queue `fn`; `preempt` (optional) asks it to stop early if something more urgent arrives meanwhile."""
        future: Future[T] = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError(f"{self._name}: cannot submit after shutdown")
            heapq.heappush(self._heap, (priority, next(self._order), future, fn, args, kwargs, preempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"parley-{self._name}", daemon=True)
                self._thread.start()
            self._wake.notify()
            running = self._running
            # Under the lock, so the hook reaches the call that is running now, not the one after it.
            if running is not None and priority < running[0] and running[1] is not None:
                running[1]()
        return future

    def waiting(self) -> int:
        with self._wake:
            return len(self._heap)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._wake:
            self._closed = True
            if cancel_futures:
                for _, _, future, *_ in self._heap:
                    future.cancel()
                self._heap.clear()
            self._wake.notify()
            thread = self._thread
        if wait and thread is not None:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._heap and not self._closed:
                    self._wake.wait()
                if not self._heap:
                    return
                priority, _, future, fn, args, kwargs, preempt = heapq.heappop(self._heap)
                if not future.set_running_or_notify_cancel():
                    continue
                self._running = (priority, preempt)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller gets it, as with ThreadPoolExecutor
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._wake:
                    self._running = None
