"""The Paraformer streaming encoder (SAN-M), run chunk by chunk as funasr's online model runs it.

Module and tensor names follow funasr's `SANMEncoderChunkOpt` so its `model.pt` loads as is (`encoder.*` keys):
`encoders0.0` maps the 560-dim LFR input to d_model, `encoders.{i}` are the remaining blocks, `after_norm` closes.
A block is pre-norm self-attention whose values also feed an FSMN memory (a depthwise 1-D convolution, kernel 11),
then a ReLU feed-forward. The first block has no attention residual (its input is wider than its output).

Chunk mechanics (chunk_size = [0, 4, 5], look-back 4), re-derived from funasr's online encoder:
- the chunk's new LFR frames are scaled by sqrt(d_model) and get sinusoidal positions counted across the turn;
- the last 5 frames of the previous chunk's input are prepended (the first chunk sees 5 zero frames);
- attention keys/values are this window's plus, per layer, a cache of earlier frames: after each chunk the
  window minus its last 5 frames is appended and only the newest 4 * 4 = 16 frames are kept;
- the FSMN memory sees only the current window (zero padded), and only the new frames are output.
Every step is deterministic given the chunk's frames and the carried state, so a turn processed chunk by chunk
as it arrives gives exactly what one pass over the finished turn gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class SanmConfig:
    input_size: int = 560
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    kernel_size: int = 11
    sanm_shift: int = 0
    # funasr's [pad_left, chunk frames, overlap frames] and encoder look-back in chunks.
    chunk_size: tuple[int, int, int] = (0, 4, 5)
    look_back: int = 4

    @property
    def overlap(self) -> int:
        return self.chunk_size[0] + self.chunk_size[2]

    @property
    def cache_frames(self) -> int:
        return self.look_back * self.chunk_size[1]


class SanmAttention(nn.Module):
    def __init__(self, heads: int, in_feat: int, n_feat: int, kernel_size: int, sanm_shift: int) -> None:
        super().__init__()
        self.h = heads
        self.d_k = n_feat // heads
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.fsmn_block = nn.Conv1d(n_feat, n_feat, kernel_size, stride=1, padding=0, groups=n_feat, bias=False)
        left = (kernel_size - 1) // 2 + sanm_shift
        self.pad = (left, kernel_size - 1 - left)

    def forward_chunk(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, overlap: int, keep: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = x.shape
        q, k, v = torch.split(self.linear_q_k_v(x), self.h * self.d_k, dim=-1)
        q_h = q.reshape(b, t, self.h, self.d_k).transpose(1, 2)
        k_h = k.reshape(b, t, self.h, self.d_k).transpose(1, 2)
        v_h = v.reshape(b, t, self.h, self.d_k).transpose(1, 2)
        stride = max(0, t - overlap)  # the frames that become history for later chunks
        if cache is None:
            new_cache = (k_h[:, :, :stride], v_h[:, :, :stride])
        else:
            new_cache = (torch.cat([cache[0], k_h[:, :, :stride]], 2)[:, :, -keep:],
                         torch.cat([cache[1], v_h[:, :, :stride]], 2)[:, :, -keep:])
            k_h = torch.cat([cache[0], k_h], 2)
            v_h = torch.cat([cache[1], v_h], 2)
        memory = self.fsmn_block(F.pad(v.transpose(1, 2), self.pad)).transpose(1, 2) + v
        scores = torch.matmul(q_h * self.d_k ** -0.5, k_h.transpose(-2, -1))
        attn = torch.matmul(torch.softmax(scores, dim=-1), v_h)
        out = self.linear_out(attn.transpose(1, 2).reshape(b, t, self.h * self.d_k))
        return out + memory, new_cache


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SanmLayer(nn.Module):
    def __init__(self, in_size: int, cfg: SanmConfig) -> None:
        super().__init__()
        size = cfg.output_size
        self.self_attn = SanmAttention(cfg.attention_heads, in_size, size, cfg.kernel_size, cfg.sanm_shift)
        self.feed_forward = FeedForward(size, cfg.linear_units)
        self.norm1 = nn.LayerNorm(in_size, eps=1e-12)
        self.norm2 = nn.LayerNorm(size, eps=1e-12)
        self.residual = in_size == size

    def forward_chunk(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, cfg: SanmConfig
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, cache = self.self_attn.forward_chunk(self.norm1(x), cache, cfg.overlap, cfg.cache_frames)
        x = x + attn if self.residual else attn
        return x + self.feed_forward(self.norm2(x)), cache


@dataclass(frozen=True)
class EncoderState:
    """What one chunk hands the next: immutable, so a snapshot is a reference (finalize never corrupts it)."""

    position: int
    overlap_feats: torch.Tensor
    caches: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]


class SanmEncoder(nn.Module):
    def __init__(self, cfg: SanmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([SanmLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([SanmLayer(cfg.output_size, cfg) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=1e-12)

    def initial_state(self, device: torch.device | str, dtype: torch.dtype) -> EncoderState:
        feats = torch.zeros(1, self.cfg.overlap, self.cfg.input_size, device=device, dtype=dtype)
        return EncoderState(0, feats, (None,) * (len(self.encoders0) + len(self.encoders)))

    def positions(self, start: int, count: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        pos = torch.arange(start + 1, start + count + 1, device=device, dtype=torch.float32)
        increment = math.log(10000.0) / (dim / 2 - 1)
        inv = torch.exp(torch.arange(dim // 2, device=device, dtype=torch.float32) * -increment)
        scaled = pos[:, None] * inv[None, :]
        return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).to(dtype)[None]

    @torch.inference_mode()
    def chunk(self, feats: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        """feats: [1, n, input_size] new LFR+CMVN frames -> ([1, n, output_size], next state)."""
        n = feats.shape[1]
        x = feats * self.cfg.output_size ** 0.5
        x = x + self.positions(state.position, n, x.shape[-1], x.device, x.dtype)
        x = torch.cat([state.overlap_feats, x], dim=1)
        overlap = x[:, -self.cfg.overlap :]
        caches = list(state.caches)
        for i, layer in enumerate([*self.encoders0, *self.encoders]):
            x, caches[i] = layer.forward_chunk(x, caches[i], self.cfg)
        out = self.after_norm(x)[:, -n:]
        return out, EncoderState(state.position + n, overlap, tuple(caches))


def config_from_yaml(conf: dict[str, Any]) -> SanmConfig:
    """funasr's config.yaml `encoder_conf` -> SanmConfig (unknown keys ignored)."""
    enc: dict[str, Any] = conf.get("encoder_conf") or {}
    front: dict[str, Any] = conf.get("frontend_conf") or {}
    if not isinstance(enc, dict) or not isinstance(front, dict):
        raise ValueError("config.yaml: encoder_conf and frontend_conf must be mappings")
    lfr_m, n_mels = int(front.get("lfr_m", 7)), int(front.get("n_mels", 80))
    return SanmConfig(
        input_size=int(conf.get("input_size", n_mels * lfr_m)),
        output_size=int(enc.get("output_size", 512)),
        attention_heads=int(enc.get("attention_heads", 4)),
        linear_units=int(enc.get("linear_units", 2048)),
        num_blocks=int(enc.get("num_blocks", 50)),
        kernel_size=int(enc.get("kernel_size", 11)),
        sanm_shift=int(enc.get("sanm_shfit") or enc.get("sanm_shift") or 0),  # funasr spells it "shfit"
    )
