"""Several conversations' KV caches for one llama.cpp context.

One `Llama` serves every session of a process, and llama.cpp keeps the KV cache of one prompt only: with two calls
taking turns, each turn found the other call's prompt in the cache and prefilled its whole history again (~1-2 s
for a few turns of history on two cores, paid on the critical path of every turn). Here, before a prompt replaces
a cache it shares little with, that cache's tokens and KV state (llama.cpp's per-sequence state, ~12 KB a token for
Qwen2.5-0.5B) are parked in memory; a later prompt that starts with a parked one more than the live cache does
gets it back. Copying a state costs milliseconds; the prefill it saves costs several ms a token (measured on two
cores: two calls alternating with ~450-token histories, first token 3.3-4.0 s without parking, 190 ms with).

Entries are found by content (the longest common token prefix), so nothing here knows about sessions.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp.llama_cpp as llama_c
from llama_cpp import Llama

log = logging.getLogger(__name__)

SEQ = 0  # llama-cpp-python decodes everything as sequence 0
MAX_ENTRIES = 8
# A cache is worth parking, or swapping in, when it spares at least this many tokens of prefill (~30 ms here).
MIN_GAIN = 32


@dataclass
class Parked:
    tokens: list[int]
    state: ctypes.Array[ctypes.c_uint8]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    def __init__(self, llm: Llama, max_entries: int = MAX_ENTRIES) -> None:
        self._llm = llm
        self._max = max_entries
        self._parked: list[Parked] = []  # least recently used first
        self.restored = 0
        self.parked = 0
        self.last_reused = 0  # prompt tokens the last `prepare` found cached: what the next decode skips

    def prepare(self, prompt: Sequence[int]) -> int:
        """Make the context hold the cache sharing the longest prefix with `prompt`; returns that prefix's length.

        Called on the LM's thread right before `Llama.generate(prompt)`, which then decodes only the rest.
        """
        live_tokens = self._live_tokens()
        live = common_prefix(live_tokens, prompt)
        if len(live_tokens) - live >= MIN_GAIN:
            # The prompt is about to overwrite a conversation the cache holds: keep it for its next turn.
            self._park(live_tokens)
        # Chosen after parking, which may have dropped the least recently used entry.
        best = max(self._parked, key=lambda p: common_prefix(p.tokens, prompt), default=None)
        gain = common_prefix(best.tokens, prompt) if best is not None else 0
        self.last_reused = live
        if best is not None and gain - live >= MIN_GAIN and self._restore(best):
            self.last_reused = gain
        return self.last_reused

    def _live_tokens(self) -> list[int]:
        return [int(t) for t in self._llm.input_ids[: self._llm.n_tokens]]

    def _park(self, tokens: list[int]) -> None:
        ctx = self._llm.ctx
        size = llama_c.llama_state_seq_get_size(ctx, SEQ)
        state = (ctypes.c_uint8 * size)()
        written = llama_c.llama_state_seq_get_data(ctx, state, size, SEQ)
        if written == 0:
            log.warning("llama.cpp returned no state for %d tokens; not parked", len(tokens))
            return
        # An entry this one extends is superseded: its conversation has moved on.
        self._parked = [p for p in self._parked if common_prefix(p.tokens, tokens) < len(p.tokens)]
        self._parked.append(Parked(tokens, state))
        del self._parked[: -self._max]
        self.parked += 1

    def _restore(self, entry: Parked) -> bool:
        llm = self._llm
        self._parked.remove(entry)  # live again (parked anew when another conversation displaces it), or useless
        llama_c.llama_memory_seq_rm(llama_c.llama_get_memory(llm.ctx), SEQ, -1, -1)
        if llama_c.llama_state_seq_set_data(llm.ctx, entry.state, len(entry.state), SEQ) == 0:
            log.warning("llama.cpp refused a parked state; prefilling instead")
            llm.n_tokens = 0
            return False
        n = len(entry.tokens)
        llm.input_ids[:n] = entry.tokens
        llm.n_tokens = n
        # llama-cpp-python samples a fully cached prompt from the last decode's logits, which belong to another
        # prompt now: make it decode at least the prompt's last token.
        llm._requires_eval = True
        self.restored += 1
        return True
