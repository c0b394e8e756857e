"""Loading Step1 checkpoints and decoding from them token by token (shared by the chat model and TTS-3B).

Decoding is a plain loop over the model's forward with a key/value cache rather than `generate()`: each token is
yielded as soon as it is sampled, and closing the generator stops the loop after the step in flight, which is
what a cancelled speculative draft needs. With Parley's own Step1 code the cache of the previous prompt is kept
and its longest common prefix with the next prompt reused (system prompt and history are prefilled once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from models.step_audio import step1 as builtin

log = logging.getLogger(__name__)

Picker = Callable[[torch.Tensor, Sequence[int]], int]


def torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def load_step1(folder: Path, dtype: torch.dtype, device_map: str, code: str) -> Any:
    """A Step1 model from a release folder, with the folder's code (`trust_remote_code`) or Parley's.

    `device_map` is a device ("cuda:0", "cpu") or an accelerate strategy ("auto" spreads layers over every GPU;
    that one needs the accelerate package).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spread = device_map in SPREAD_STRATEGIES
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map if spread else None}
    model: Any
    if code == "builtin":
        config = builtin.Step1Config.from_pretrained(folder)
        model = builtin.Step1ForCausalLM.from_pretrained(folder, config=config, **kwargs)
    else:
        log.info("Step1 attention kernel for %s: %s", folder, load_optimus(folder))
        try:
            AutoConfig.register("step1", builtin.Step1Config)
            AutoModelForCausalLM.register(builtin.Step1Config, builtin.Step1ForCausalLM)
        except ValueError:
            pass  # already registered in this process
        # A folder with its own code (auto_map) uses it; one without falls back to the registration above.
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kwargs)
    if not spread:
        model = model.to(device_map or "cpu")
    return model.eval()


SPREAD_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def load_optimus(folder: Path) -> str:
    """Load the release's attention kernel (`lib/liboptimus_ths-torch<ver>-cu<ver>*.so`) for the folder's code.

    The release's modeling code calls `torch.ops.Optimus.fwd` when the library is loaded and falls back to SDPA
    with the ALiBi bias otherwise; this returns what happened, for /healthz.
    """
    if not torch.cuda.is_available():
        return "no CUDA: SDPA"
    version = ".".join(torch.__version__.split(".")[:2])
    candidates = sorted((folder / "lib").glob(f"liboptimus_ths-torch{version}-*.so"))
    if not candidates:
        return f"no lib/liboptimus_ths-torch{version}-*.so: SDPA"
    try:
        torch.ops.load_library(str(candidates[-1]))
    except (OSError, RuntimeError) as exc:
        log.warning("could not load %s (%s): Step1 attention falls back to SDPA", candidates[-1], exc)
        return f"{candidates[-1].name} failed to load: SDPA"
    return f"{candidates[-1].name}"


def input_device(model: Any) -> torch.device:
    device: torch.device = model.get_input_embeddings().weight.device
    return device


def sampler(temperature: float, top_p: float, top_k: int = 0, seed: int | None = None) -> Picker:
    """Temperature, top-k and nucleus sampling on the CPU (greedy at temperature 0)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def pick(logits: torch.Tensor, history: Sequence[int]) -> int:
        scores = logits.float().cpu()
        if temperature <= 0:
            return int(scores.argmax())
        if 0 < top_k < scores.numel():
            kth = scores.topk(top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=generator))

    return pick


def repetition_aware(pick: Picker, window: int = 10, threshold: float = 0.1) -> Picker:
    """The release's TTS rule: a token that fills more than `threshold` of the last `window` may not follow."""

    def guarded(logits: torch.Tensor, history: Sequence[int]) -> int:
        recent = history[-window:]
        if len(recent) == window and recent.count(recent[-1]) / window > threshold:
            logits = logits.clone()
            logits[recent[-1]] = float("-inf")
        return pick(logits, history)

    return guarded


class PrefixCache:
    """The last prompt's key/value cache, reused up to the longest common prefix with the next one."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.ids: list[int] = []

    def take(self, prompt: Sequence[int]) -> tuple[Any, int]:
        """(cache, tokens already in it) for `prompt`; at least the last prompt token is left to feed."""
        if self.cache is None or not hasattr(self.cache, "keep"):
            self.cache, self.ids = None, []
            return None, 0
        common = 0
        for a, b in zip(self.ids, prompt, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        self.cache.keep(common)
        self.ids = self.ids[:common]
        return self.cache, common

    def record(self, cache: Any, fed: Sequence[int]) -> None:
        self.cache = cache
        self.ids.extend(fed)


@torch.inference_mode()
def decode(
    model: Any,
    prompt: Sequence[int],
    max_new: int,
    pick: Picker,
    stop_ids: set[int],
    prefix: PrefixCache | None = None,
) -> Iterator[int]:
    """Sampled token ids after `prompt`, one at a time, until a stop id (not yielded) or `max_new`."""
    device = input_device(model)
    cache, done = prefix.take(prompt) if prefix is not None else (None, 0)
    feed = list(prompt[done:])
    history = list(prompt)
    for _ in range(max_new):
        out = model(input_ids=torch.tensor([feed], device=device), past_key_values=cache, use_cache=True)
        cache = builtin.output_cache(out)
        if prefix is not None:
            prefix.record(cache, feed)
        token = pick(out.logits[0, -1], history)
        if token in stop_ids:
            return
        history.append(token)
        yield token
        feed = [token]
