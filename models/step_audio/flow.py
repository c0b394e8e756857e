"""CosyVoice's flow-matching decoder (`MaskedDiffWithXvec`): speech tokens + a prompt -> 80-bin mel at 22.05 kHz.

Re-implemented with the module and tensor names of CosyVoice's `flow.pt` so the release's checkpoint loads as is:
- `input_embedding` (token -> 512), `encoder` (a Conformer without convolution modules: linear input layer,
  espnet relative positions, pre-norm blocks of relative-position attention and a SiLU feed-forward),
  `encoder_proj` (512 -> 80), `spk_embed_affine_layer` (192-dim CAM++ x-vector -> 80);
- `length_regulator`: linear interpolation to the mel length, then four conv/GroupNorm/Mish blocks and a 1x1 conv;
- `decoder.estimator`: Matcha-TTS's 1-D U-Net (ResNet blocks with a time embedding, transformer blocks,
  one down/up-sampling), integrated with 10 Euler steps on a cosine schedule with classifier-free guidance 0.7.
The prompt's tokens and mel condition the output; only the mel after the prompt is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

MEL_RATE = 22050
MEL_HOP = 256


@dataclass(frozen=True)
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 4096
    # Tokens per second of the token stream the flow reads; the interleaved Step-Audio stream runs at 41.67.
    input_frame_rate: float = 25.0
    encoder_output_size: int = 512
    encoder_heads: int = 8
    encoder_linear_units: int = 2048
    encoder_blocks: int = 6
    regulator_ratios: int = 4
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    cfg_rate: float = 0.7
    extra: dict[str, object] = field(default_factory=dict, compare=False)


# --- encoder: conformer blocks without convolution, espnet relative positions ----------------------------------


def rel_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 2T - 1, dim] encodings of relative positions T-1 .. -(T-1)."""
    pos = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(2 * length - 1, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe[None].to(dtype)


class RelPositionAttention(nn.Module):
    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.h = heads
        self.d_k = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(1, -1, self.h, self.d_k).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        # Column j of row i is relative position i - j, stored at index (T - 1) - i + j of `pos`.
        idx = (t - 1) - torch.arange(t, device=x.device)[:, None] + torch.arange(t, device=x.device)[None, :]
        position = position.gather(-1, idx[None, None].expand(b, self.h, t, t))
        weights = torch.softmax((content + position) / math.sqrt(self.d_k), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, -1)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = PositionwiseFeedForward(dim, hidden)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos)
        return x + self.feed_forward(self.norm_ff(x))


class LinearEmbed(nn.Module):
    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5), nn.Dropout(0.0))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.xscale
        return x, rel_positions(x.shape[1], x.shape[2], x.device, x.dtype)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        dim = cfg.encoder_output_size
        self.embed = LinearEmbed(cfg.input_size, dim)
        self.encoders = nn.ModuleList(
            [ConformerLayer(dim, cfg.encoder_heads, cfg.encoder_linear_units) for _ in range(cfg.encoder_blocks)]
        )
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pos = self.embed(x)
        for layer in self.encoders:
            x = layer(x, pos)
        return self.after_norm(x)


class InterpolateRegulator(nn.Module):
    def __init__(self, channels: int, ratios: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(ratios):
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, prompt: torch.Tensor, text: torch.Tensor, prompt_len: int, text_len: int) -> torch.Tensor:
        """[B, T, C] token features of the prompt and the rest -> [B, prompt_len + text_len, C]."""
        parts = []
        if prompt.shape[1] and prompt_len:
            parts.append(F.interpolate(prompt.transpose(1, 2), size=prompt_len, mode="linear"))
        parts.append(F.interpolate(text.transpose(1, 2), size=text_len, mode="linear"))
        return self.model(torch.cat(parts, dim=2)).transpose(1, 2)


# --- the estimator: Matcha-TTS's conditional 1-D U-Net ----------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = Block1D(dim, dim_out)
        self.block2 = Block1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(t)[:, :, None]
        return self.block2(h, mask) + self.res_conv(x * mask)


class Downsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Upsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Attention(nn.Module):
    """diffusers' Attention as Matcha configures it: bias-free q/k/v, an output projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        projected: torch.Tensor = self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))
        return projected


class GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class ConditionalDecoder(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        in_channels = 4 * cfg.output_size  # noisy mel, mu, speaker, prompt condition
        channels = tuple(cfg.channels)
        self.in_channels = in_channels
        time_dim = channels[0] * 4
        self.time_mlp = TimestepEmbedding(in_channels, time_dim)

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList([TransformerBlock(dim, cfg.num_heads, cfg.attention_head_dim)
                                  for _ in range(cfg.n_blocks)])

        self.down_blocks = nn.ModuleList()
        out_ch = in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            down: nn.Module = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Downsample1D(out_ch)
            self.down_blocks.append(nn.ModuleList([ResnetBlock1D(in_ch, out_ch, time_dim), transformers(out_ch), down]))
        self.mid_blocks = nn.ModuleList(
            [nn.ModuleList([ResnetBlock1D(channels[-1], channels[-1], time_dim), transformers(channels[-1])])
             for _ in range(cfg.num_mid_blocks)]
        )
        ups = (*channels[::-1], channels[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(ups) - 1):
            last = i == len(ups) - 2
            up: nn.Module = nn.Conv1d(ups[i + 1], ups[i + 1], 3, padding=1) if last else Upsample1D(ups[i + 1])
            self.up_blocks.append(nn.ModuleList([ResnetBlock1D(2 * ups[i], ups[i + 1], time_dim),
                                                 transformers(ups[i + 1]), up]))
        self.final_block = Block1D(ups[-1], ups[-1])
        self.final_proj = nn.Conv1d(ups[-1], cfg.output_size, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.in_channels).to(x.dtype))
        x = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)
        hiddens, masks = [], [mask]
        for stage in self.down_blocks:
            resnet, blocks, down = stage.children()
            m = masks[-1]
            x = self._attend(resnet(x, m, temb), blocks)
            hiddens.append(x)
            x = down(x * m)
            masks.append(m[:, :, ::2])
        masks.pop()
        m_mid = masks[-1]
        for stage in self.mid_blocks:
            resnet, blocks = stage.children()
            x = self._attend(resnet(x, m_mid, temb), blocks)
        m_up = mask
        for stage in self.up_blocks:
            resnet, blocks, up = stage.children()
            m_up = masks.pop()
            skip = hiddens.pop()
            x = torch.cat([x[:, :, : skip.shape[-1]], skip], dim=1)
            x = self._attend(resnet(x, m_up, temb), blocks)
            x = up(x * m_up)
        x = self.final_block(x, m_up)
        out: torch.Tensor = self.final_proj(x * m_up) * mask
        return out

    @staticmethod
    def _attend(x: torch.Tensor, blocks: nn.Module) -> torch.Tensor:
        x = x.transpose(1, 2)
        for block in blocks.children():
            x = block(x)
        return x.transpose(1, 2)


class ConditionalCFM(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.estimator = ConditionalDecoder(cfg)
        self.cfg_rate = cfg.cfg_rate

    def forward(self, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor, steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn(mu.shape, generator=generator, device="cpu").to(mu.device, mu.dtype)
        t_span = 1 - torch.cos(torch.linspace(0, 1, steps + 1, device=mu.device) * 0.5 * math.pi)
        for step in range(steps):
            t, dt = t_span[step], t_span[step + 1] - t_span[step]
            if self.cfg_rate > 0:
                # Guided and unguided estimates in one batch: the unguided one sees no mu, speaker or prompt.
                both = self.estimator(
                    torch.cat([x, x]), torch.cat([mask, mask]), torch.cat([mu, torch.zeros_like(mu)]),
                    t.expand(2).to(mu.dtype), torch.cat([spks, torch.zeros_like(spks)]),
                    torch.cat([cond, torch.zeros_like(cond)]),
                )
                guided, free = both.chunk(2)
                velocity = (1.0 + self.cfg_rate) * guided - self.cfg_rate * free
            else:
                velocity = self.estimator(x, mask, mu, t.expand(1).to(mu.dtype), spks, cond)
            x = x + dt.to(x.dtype) * velocity
        return x


class MaskedDiffWithXvec(nn.Module):
    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = ConformerEncoder(cfg)
        self.encoder_proj = nn.Linear(cfg.encoder_output_size, cfg.output_size)
        self.length_regulator = InterpolateRegulator(cfg.output_size, cfg.regulator_ratios)
        self.decoder = ConditionalCFM(cfg)

    def mel_frames(self, tokens: int) -> int:
        return int(tokens / self.cfg.input_frame_rate * MEL_RATE / MEL_HOP)

    @torch.inference_mode()
    def inference(self, tokens: torch.Tensor, prompt_tokens: torch.Tensor, prompt_feat: torch.Tensor,
                  embedding: torch.Tensor, steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
        """tokens/prompt_tokens [1, N] (codes in 0..vocab), prompt_feat [1, T, 80], embedding [1, 192] -> [1, 80, M]."""
        spks = self.spk_embed_affine_layer(F.normalize(embedding, dim=1))
        n_prompt = prompt_tokens.shape[1]
        all_tokens = torch.cat([prompt_tokens, tokens], dim=1).clamp(0, self.cfg.vocab_size - 1)
        h = self.encoder_proj(self.encoder(self.input_embedding(all_tokens)))
        prompt_len, text_len = prompt_feat.shape[1], self.mel_frames(tokens.shape[1])
        h = self.length_regulator(h[:, :n_prompt], h[:, n_prompt:], prompt_len, text_len)
        total = prompt_len + text_len
        cond = torch.zeros(1, total, self.cfg.output_size, device=h.device, dtype=h.dtype)
        cond[:, :prompt_len] = prompt_feat.to(h.dtype)
        mask = torch.ones(1, 1, total, device=h.device, dtype=h.dtype)
        mel = self.decoder(h.transpose(1, 2), mask, spks, cond.transpose(1, 2), steps, generator)
        return mel[:, :, prompt_len:]
