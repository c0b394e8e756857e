"""The embedded stages take turns on the cores: one at a time, a caller's final pass first (models/core_gate.py).

The real stages run through the gate in every embedded-stack test; these tests pin down the order, which no
timing-based test could show reliably.
"""

from __future__ import annotations

import threading
import time

from models.core_gate import FINAL_PASS, LIVE_TRANSCRIPT, SPEECH, CoreGate


def test_waiting_stages_go_by_priority_then_arrival_and_never_two_at_once() -> None:
    gate = CoreGate()
    order: list[str] = []
    inside = 0
    most_inside = 0
    count_lock = threading.Lock()

    def stage(name: str, priority: int) -> None:
        nonlocal inside, most_inside
        with gate.turn(priority):
            with count_lock:
                inside += 1
                most_inside = max(most_inside, inside)
            order.append(name)
            time.sleep(0.01)
            with count_lock:
                inside -= 1

    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.turn(SPEECH):
            holding.set()
            release.wait(5)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(5)
    waiting = [("live transcript", LIVE_TRANSCRIPT), ("lm token", SPEECH), ("tts sentence", SPEECH),
               ("final pass", FINAL_PASS)]
    threads = []
    for queued, (name, priority) in enumerate(waiting, start=1):  # one after another while the holder has them
        t = threading.Thread(target=stage, args=(name, priority))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while gate.waiting() < queued and time.monotonic() < deadline:
            time.sleep(0.001)
        assert gate.waiting() == queued
    release.set()
    for t in [first, *threads]:
        t.join(5)
    assert order == ["final pass", "lm token", "tts sentence", "live transcript"]
    assert most_inside == 1


def test_a_stage_that_fails_gives_the_cores_back() -> None:
    gate = CoreGate()
    try:
        with gate.turn(SPEECH):
            raise RuntimeError("llama.cpp aborted")
    except RuntimeError:
        pass
    done = threading.Event()

    def next_stage() -> None:
        with gate.turn(FINAL_PASS):
            done.set()

    threading.Thread(target=next_stage).start()
    assert done.wait(2)
