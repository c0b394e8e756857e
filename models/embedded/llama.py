"""llama-cpp-python as the embedded LM: the GGUF's own chat template, streaming, tool calls, prefix reuse.

One `Llama` per process serves every session: llama.cpp keeps the KV cache of the previous prompt and reuses its
longest common prefix, so the system prompt and history are prefilled once and a turn only pays for its new
tokens (TTFT ~80 ms instead of ~1.1 s for a 250-token prompt here). With several calls, each conversation's cache
is parked while another one runs and given back on its next turn (models/embedded/prompt_cache.py). Generations
are serialised by an asyncio lock held for a whole stream; interleaving two sessions token by token would swap
caches every token.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as llama_c
import numpy as np
from llama_cpp import Llama, LogitsProcessorList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from models.core_gate import SPEECH, CoreGate, turn
from models.embedded import message_end
from models.embedded.cpu import check_baseline, extra_buffer_types_safe
from models.embedded.prompt_cache import PromptCache, common_prefix
from models.interfaces import GenerationOptions, LMDelta, Message
from models.threaded import iterate_in_thread, stage_executor
from models.tool_text import TAG_CLOSE, TAG_OPEN, parse_text_call

log = logging.getLogger(__name__)
_PARAMS_LOCK = threading.Lock()
# llama.cpp asks its abort callback between the nodes of every compute graph, from its own worker thread, so a
# closed stream stops a prompt's prefill (seconds for a history the cache lost) or a token's decode within
# milliseconds. A Python callback would take the GIL hundreds of times per token; libc's strlen over a one-byte
# flag answers without Python: b"" is 0 (go on), b"\x01" is 1 (stop). size_t comes back in the register that
# carries a C bool (x86-64 and AArch64 calling conventions), so strlen is a valid `bool (*)(void *)` here.
_STRLEN = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value or 0


@contextlib.contextmanager
def model_params_with(use_extra_bufts: bool) -> Iterator[None]:
    """`Llama(...)` builds its llama_model_params internally and has no argument for extra buffer types, so the
    default-params factory it calls is wrapped for the duration of one load."""
    original = llama_c.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = use_extra_bufts
        return p

    with _PARAMS_LOCK:
        llama_c.llama_model_default_params = params
        try:
            yield
        finally:
            llama_c.llama_model_default_params = original


def message_dict(m: Message) -> dict[str, Any]:
    """A Message in the shape chat templates (and OpenAI servers) expect."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d


def tool_results_as_notes(messages: Sequence[Message]) -> list[Message]:
    """Tool exchanges rewritten as a short user note.

    Measured with Qwen2.5-0.5B: given its template's native <tool_response> turn, it answers with more JSON
    (3 of 3 probes); given the same result as a user note, it says the answer in a sentence (3 of 3), and the
    prompt prefix with the tool schemas stays cached (first token ~0.22 s).
    """
    names: dict[str, str] = {}
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            names.update({c.id: c.name for c in m.tool_calls})
            if m.content.strip():
                out.append(Message("assistant", m.content))
        elif m.role == "tool":
            name = names.get(m.tool_call_id, "tool")
            out.append(Message("user", f"(The {name} tool returned {m.content}. Say the answer to my question in "
                                       "one short spoken sentence.)"))
        else:
            out.append(m)
    return out


class LlamaLM:
    def __init__(
        self, model_file: Path, name: str, n_ctx: int, threads: int, tool_results_as_text: bool = True,
        extra_buffer_types: bool | None = None, gate: CoreGate | None = None,
    ) -> None:
        """`extra_buffer_types`: llama.cpp's weight repacking; None = on unless AMX is advertised but refused."""
        check_baseline()
        self.name = name
        self.tool_results_as_text = tool_results_as_text
        if extra_buffer_types is None:
            extra_buffer_types = extra_buffer_types_safe()
            if not extra_buffer_types:
                log.warning("this CPU advertises AMX but the kernel refuses its tile state: llama.cpp's extra "
                            "buffer types (weight repacking, AMX kernels) are off")
        self.extra_buffer_types = extra_buffer_types
        self._gate = gate
        with model_params_with(extra_buffer_types):
            self.llm = Llama(
                model_path=str(model_file), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_batch=256, verbose=False,
            )
        template = self.llm.metadata.get("tokenizer.chat_template", "")
        self.supports_tools = "tools" in template
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
        self._format = Jinja2ChatFormatter(template, eos_token=eos, bos_token="")
        self._stop_ids = {self.llm.token_eos()}
        for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            ids = self.llm.tokenize(marker.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._stop_ids.add(ids[0])
        # One scan of the vocabulary (~0.3 s), at load rather than in a caller's turn, serves both token sets.
        pieces = [self.llm.detokenize([i], special=True) for i in range(self.llm.n_vocab())]
        self._no_tool_tokens = np.array(
            [i for i, p in enumerate(pieces) if p.lstrip().startswith((b"{", TAG_OPEN.encode()))], dtype=np.int64)
        self._closing = message_end.closing_tokens(pieces, self._stop_ids)
        self.prompt_cache = PromptCache(self.llm)
        self._abort = ctypes.create_string_buffer(2)
        self._abort_callback = llama_c.ggml_abort_callback(_STRLEN)  # kept: llama.cpp holds only the pointer
        llama_c.llama_set_abort_callback(self.llm.ctx, self._abort_callback,
                                         ctypes.cast(self._abort, ctypes.c_void_p))
        self._executor = stage_executor("lm")
        self._lock = asyncio.Lock()
        self._tokenize_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        with self._tokenize_lock:
            return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def prompt_tokens(self, messages: Sequence[Message], options: GenerationOptions) -> list[int]:
        return self.llm.tokenize(self._render(messages, options).encode(), add_bos=False, special=True)

    def _render(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        tools: Any = [t.as_openai() for t in options.tools] if options.tools and self.supports_tools else None
        if self.tool_results_as_text:
            messages = tool_results_as_notes(messages)
        chat: Any = [message_dict(m) for m in messages]
        return str(self._format(messages=chat, tools=tools).prompt)

    def finished_probability(self, messages: Sequence[Message], options: GenerationOptions,
                             tokens: Sequence[int]) -> float | None:
        """How likely the last (user) message is complete (models/embedded/message_end.py); on the LM's thread.

        `tokens` is the answer's prompt, already `prompt_cache.prepare`d; the context is left holding it, decoded,
        so the answer samples at once. None when there is nothing to read (no user message last, no words).
        """
        if not messages or messages[-1].role != "user":
            return None
        last = messages[-1]
        words = message_end.trim(last.content)
        if not words:
            return None
        rendered = self._render([*messages[:-1], dataclasses.replace(last, content=words)], options)
        at = rendered.rfind(words)
        if at < 0:
            return None
        prefix = self.llm.tokenize(rendered[: at + len(words)].encode(), add_bos=False, special=True)
        if len(prefix) < len(tokens) and list(tokens[: len(prefix)]) == prefix:
            return self._decode_reading(tokens, len(prefix) - 1)
        # The words' last token merges with what follows them in the prompt: read after the words alone (one more
        # pass over the weights; the answer's prompt then decodes the rest).
        return self._decode_reading(prefix, len(prefix) - 1)

    def _decode_reading(self, prompt: Sequence[int], at: int) -> float:
        """Decode what the context lacks of `prompt`, keeping the logits after token `at` too: the reading shares
        the prefill's passes over the weights (a pass of its own cost the first token ~80 ms here).

        What `Llama.eval` does, with one more output row; the context then holds `prompt`, and its last logits.
        It uses llama-cpp-python's internals as `Llama.eval` does (the version is pinned in requirements/), and
        `test_the_lm_reads_whether_the_callers_words_are_finished_before_it_answers` holds the answer to the one
        `Llama.generate` gives without the reading.
        """
        llm = self.llm
        keep = min(common_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt), at)
        llm.n_tokens = keep
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        reading = 0.0
        for start in range(keep, len(prompt), llm.n_batch):
            chunk = list(prompt[start : start + llm.n_batch])
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            inside = start <= at < start + len(chunk)
            if inside:
                llm._batch.batch.logits[at - start] = True
            llm._ctx.decode(llm._batch)
            if inside:
                row = llama_c.llama_get_logits_ith(llm.ctx, at - start)
                reading = message_end.probability(np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)), self._closing)
            llm.input_ids[start : start + len(chunk)] = chunk
            llm.n_tokens = start + len(chunk)
        llm._requires_eval = False
        return reading

    async def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[LMDelta]:
        # Closed inside the lock: a stream left at a tool call is closed by its consumer later, and its
        # `_stop` must land before the next stream's generation starts, not abort it (the flaky tool-call test).
        async with self._lock, contextlib.aclosing(
            iterate_in_thread(self._generate(messages, options), self._executor, self._stop)
        ) as deltas:
            async for delta in deltas:
                yield delta

    def _stop(self) -> None:
        """The stream was closed: the llama.cpp call in flight, if any, aborts (and raises on the LM thread)."""
        self._abort[0] = b"\x01"

    def _generate(self, messages: Sequence[Message], options: GenerationOptions) -> Iterator[LMDelta]:
        tokens = self.prompt_tokens(messages, options)
        room = self.llm.n_ctx() - len(tokens)
        if room < 8:
            raise RuntimeError(f"prompt of {len(tokens)} tokens leaves no room in a {self.llm.n_ctx()}-token context")
        known = {t.name for t in options.tools}
        processors = None
        if options.tool_choice == "none" and options.tools:
            banned = self._no_tool_tokens
            processors = LogitsProcessorList([lambda ids, scores: _ban(scores, banned)])
        self._abort[0] = b"\x00"  # a new generation; a stream closed before it may have left the flag set
        with turn(self._gate, SPEECH):
            self.prompt_cache.prepare(tokens)
            finished = self.finished_probability(messages, options, tokens) if options.score_turn_end else None
        if finished is not None:
            yield LMDelta(finished=finished)
        pending = b""
        in_tool = False
        tool_body = ""
        # Small models sometimes write the tool call as bare JSON without the <tool_call> tokens. A reply that
        # opens with "{" is held back until it ends: spoken JSON is worse than a slower first word.
        lead = ""
        bare_json: bool | None = None
        generated = self.llm.generate(tokens, temp=options.temperature, top_p=0.9, top_k=40, repeat_penalty=1.1,
                                      logits_processor=processors)
        for count in itertools.count():
            # One token per turn on the cores (the first also reads the prompt): a caller's final ASR pass waits
            # for at most one token step (models/core_gate.py).
            with turn(self._gate, SPEECH):
                token = next(generated, None)
            if token is None or token in self._stop_ids or count >= min(options.max_tokens, room):
                break
            pending += self.llm.detokenize([token], special=True)
            try:
                piece = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a multi-byte character split across tokens
            pending = b""
            if piece == TAG_OPEN:
                in_tool, tool_body = True, ""
            elif piece == TAG_CLOSE and in_tool:
                in_tool = False
                call = parse_text_call(tool_body, known)
                if call is not None:
                    yield LMDelta(tool_call=call)
                    return  # generation resumes with the tool's result in a new prompt
            elif in_tool:
                tool_body += piece
            elif bare_json is None:
                lead += piece
                if lead.strip():
                    bare_json = lead.lstrip().startswith("{")
                    if not bare_json:
                        yield LMDelta(text=lead)
            elif bare_json:
                lead += piece
            elif piece:
                yield LMDelta(text=piece)
        if in_tool or bare_json:
            call = parse_text_call(tool_body if in_tool else lead, known)
            if call is not None:
                yield LMDelta(tool_call=call)
            elif bare_json:
                yield LMDelta(text=lead)


def _ban(scores: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    scores[tokens] = -np.inf
    return scores
