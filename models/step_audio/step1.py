"""Step1ForCausalLM re-implemented: the architecture of Step-Audio-Chat and Step-Audio-TTS-3B.

A pre-norm decoder with RMSNorm, grouped-query attention (`num_attention_groups` key/value heads), a SiLU-gated MLP
and no position embeddings: positions enter only through an ALiBi-style bias that grows with the square root of
the distance, -slope_h * sqrt(i - j) for key j at or before query i. Standard flash-attention kernels take no such
bias, so attention here is PyTorch SDPA with the bias as a float mask; the release ships its own CUDA kernel
(`lib/liboptimus_ths*.so`) for the folder's code to use instead.

Tensor names match the release's checkpoints (`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
`model.layers.{i}.mlp.{gate,up,down}_proj`, `model.layers.{i}.{input,post_attention}_layernorm`, `model.norm`,
`lm_head`). This file depends only on torch and transformers so it can also be written into a model folder as
its remote code (`modeling_step1.py`); that is how the synthetic test folders load through the same
`AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` call as the real ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class Step1Config(PretrainedConfig):
    model_type = "step1"

    def __init__(
        self,
        hidden_size: int = 3072,
        intermediate_size: int = 8192,
        num_attention_heads: int = 48,
        num_attention_groups: int = 4,
        num_hidden_layers: int = 32,
        max_seq_len: int = 32768,
        vocab_size: int = 74752,
        rms_norm_eps: float = 1e-5,
        bos_token_id: int = 1,
        eos_token_id: int = 3,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.num_hidden_layers = num_hidden_layers
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi slope schedule: a geometric series over the nearest power of two, interleaved beyond it."""
    n = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]
    slopes += [2.0 ** (-4.0 * k / n) for k in range(1, 2 * (heads - n), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def sqrt_alibi_bias(slopes: torch.Tensor, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """[heads, q_len, k_len] float bias for queries at positions k_len - q_len .. k_len - 1."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device, dtype=torch.float32)[:, None]
    k_pos = torch.arange(k_len, device=device, dtype=torch.float32)[None, :]
    dist = q_pos - k_pos
    bias = -torch.sqrt(dist.clamp(min=0))[None] * slopes.to(device)[:, None, None]
    return bias.masked_fill((dist < 0)[None], float("-inf"))


class Step1Cache:
    """Keys/values per layer, [batch, groups, seq, head_dim]; `keep(n)` drops everything after position n."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def get_seq_length(self, layer: int = 0) -> int:
        k = self.keys[layer]
        return 0 if k is None else int(k.shape[2])

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None:
            k = torch.cat([old_k, k], dim=2)
            v = torch.cat([old_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def keep(self, n: int) -> None:
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None and v is not None:
                self.keys[i], self.values[i] = k[:, :, :n], v[:, :, :n]


class Step1RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + self.eps).to(x.dtype)) * self.weight


class Step1Attention(nn.Module):
    def __init__(self, config: Step1Config, layer: int) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.groups = config.num_attention_groups
        self.head_dim = config.hidden_size // self.heads
        self.layer = layer
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.groups * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.groups * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, slopes: torch.Tensor, cache: Step1Cache | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        repeat = self.heads // self.groups
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        bias = sqrt_alibi_bias(slopes, s, k.shape[2], x.device).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Step1MLP(nn.Module):
    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1Layer(nn.Module):
    def __init__(self, config: Step1Config, layer: int) -> None:
        super().__init__()
        self.self_attn = Step1Attention(config, layer)
        self.mlp = Step1MLP(config)
        self.input_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, slopes: torch.Tensor, cache: Step1Cache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), slopes, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1PreTrainedModel(PreTrainedModel):
    config_class = Step1Config
    base_model_prefix = "model"
    _no_split_modules = ["Step1Layer"]  # noqa: RUF012 - the type transformers declares

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Step1RMSNorm):
            nn.init.ones_(module.weight)


class Step1Model(Step1PreTrainedModel):
    def __init__(self, config: Step1Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Step1Layer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, cache: Step1Cache | None = None) -> torch.Tensor:
        # Slopes are made per call (a few floats), not kept as a buffer that meta-device loading would leave empty.
        slopes = alibi_slopes(self.config.num_attention_heads)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, slopes, cache)
        return self.norm(x)


# transformers 5.x renamed the output's `past_key_values` field to `cache` (5.24 has only `cache`).
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned, whichever name this transformers gives it."""
    return getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)


class Step1ForCausalLM(Step1PreTrainedModel):
    def __init__(self, config: Step1Config) -> None:
        super().__init__(config)
        self.model = Step1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: Step1Cache | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        cache = past_key_values
        if use_cache and cache is None:
            cache = Step1Cache(self.config.num_hidden_layers)
        hidden = self.model(input_ids, cache)
        logits = self.lm_head(hidden)
        # Step1Cache is not a transformers Cache: the decode loop only hands it back to this model.
        fields: dict[str, Any] = {CACHE_FIELD: cache if use_cache else None}
        return CausalLMOutputWithPast(logits=logits, **fields)
