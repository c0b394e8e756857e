"""Step-Audio-Chat in-process (transformers) as Parley's LanguageModel.

The prompt is the release's template rendered as text, `<audio_N>` tags included, and tokenized whole as the
release does (the tokenizer knows every `<audio_N>` as one token). Output is text only. One model per process
serves every session; streams are serialised by an asyncio lock held for a whole stream (interleaving sessions
token by token would thrash the reused prefix cache), and the decode loop runs on the LM stage's thread.

Tools: the release documents no tool-call format for Step-Audio-Chat, so tool schemas are not sent in-process
(serve it with vLLM and a tool parser, `chat_backend = "openai"`, to use tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from models.interfaces import GenerationOptions, LMDelta, Message
from models.step_audio import chat_format
from models.step_audio.generation import PrefixCache, decode, load_step1, sampler
from models.threaded import iterate_in_thread, stage_executor

log = logging.getLogger(__name__)


class StepChatLM:
    name = "step-audio-chat"

    def __init__(self, model: Any, tokenizer: Any, top_p: float, max_seq_len: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.top_p = top_p
        self.max_seq_len = max_seq_len
        self._stop = {chat_format.EOT_ID}
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self._stop.add(int(tokenizer.eos_token_id))
        self._prefix = PrefixCache()
        self._executor = stage_executor("lm")
        self._lock = asyncio.Lock()
        self._tokenize_lock = threading.Lock()
        self._warned_tools = False

    @classmethod
    def load(cls, folder: Path, device_map: str, dtype: Any, top_p: float, code: str) -> StepChatLM:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        check_special_tokens(tokenizer, folder)
        model = load_step1(folder, dtype, device_map, code)
        max_len = int(getattr(model.config, "max_seq_len", 0) or getattr(model.config, "max_position_embeddings", 4096))
        return cls(model, tokenizer, top_p, max_len)

    # --- LanguageModel --------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._tokenize_lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        with self._tokenize_lock:
            ids = self.tokenizer.encode(chat_format.render(messages), add_special_tokens=False)
        return chat_format.with_bos(ids)

    async def stream(self, messages: Sequence[Message], options: GenerationOptions) -> AsyncIterator[LMDelta]:
        if options.tools and not self._warned_tools:
            self._warned_tools = True
            log.warning("Step-Audio-Chat in-process has no tool-call format: tools are not offered to it")
        # Closed inside the lock, so the next stream never starts while this one's generator is still open.
        async with self._lock, contextlib.aclosing(
            iterate_in_thread(self._generate(messages, options), self._executor)
        ) as deltas:
            async for delta in deltas:
                yield delta

    def _generate(self, messages: Sequence[Message], options: GenerationOptions) -> Iterator[LMDelta]:
        prompt = self.prompt_ids(messages)
        room = self.max_seq_len - len(prompt)
        if room < 8:
            raise RuntimeError(f"prompt of {len(prompt)} tokens leaves no room in Step1's {self.max_seq_len}")
        pick = sampler(options.temperature, self.top_p)
        yield from self._text(decode(self.model, prompt, min(options.max_tokens, room), pick, self._stop,
                                     self._prefix))

    def _text(self, ids: Iterator[int]) -> Iterator[LMDelta]:
        """Text deltas from token ids; a character split across tokens waits for its last byte."""
        out: list[int] = []
        shown = ""
        for token in ids:
            out.append(token)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(shown) and text.startswith(shown):
                yield LMDelta(text=text[len(shown):])
                shown = text
            elif text != shown:
                # A detokenizer that rewrites earlier text (rare): send only what extends the spoken text.
                shown = text

    # --- transcripts for history (blocking; called from the tokenizer's thread) -----------------------------

    def transcribe(self, audio_content: str, asr_prompt: str, max_tokens: int) -> str:
        """Step-Audio-Chat's own transcript of an audio turn (its own cache: drafts' prefix stays intact)."""
        messages = [Message("system", asr_prompt), Message("user", audio_content)]
        prompt = self.prompt_ids(messages)
        ids = list(decode(self.model, prompt, max_tokens, sampler(0.0, 1.0), self._stop))
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()


def check_special_tokens(tokenizer: Any, folder: Path) -> None:
    """The ids the template and the audio format rely on; a folder whose tokenizer disagrees is refused."""
    expected = {chat_format.BOT: chat_format.BOT_ID, chat_format.EOT: chat_format.EOT_ID, "<audio_0>": 65536}
    for token, want in expected.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            raise ValueError(f"{folder}: tokenizer maps {token} to {got}, Step-Audio's format needs {want}")
