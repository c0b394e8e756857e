"""HiFT (HiFi-GAN with a neural source filter and an inverse-STFT head): 80-bin mel -> 22.05 kHz waveform.

Re-implemented with the tensor names of CosyVoice's `hift.pt` (weight-normed convolutions stored as `weight_g` /
`weight_v`; checkpoints saved with torch's newer parametrizations are renamed on load):
- `f0_predictor`: five weight-normed convs with ELU and a linear head predict F0 per mel frame;
- `m_source`: F0 upsampled to the sample rate drives sine harmonics (plus noise), merged by `l_linear` + tanh;
- the mel goes through `conv_pre`, then per upsampling stage a leaky ReLU, a transposed conv (`ups`), the STFT of
  the source downsampled to that rate (`source_downs` + `source_resblocks`), and averaged Snake-activated
  residual blocks (`resblocks`); `conv_post` predicts log-magnitude and phase of a 16-point STFT (hop 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class HiftConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512

    @property
    def hop(self) -> int:
        return int(np.prod(self.upsample_rates)) * self.hop_len


class _WeightNorm(nn.Module):
    """weight = g * v / |v| (norm over all but the first axis), stored as `weight_g` and `weight_v`."""

    weight_g: nn.Parameter
    weight_v: nn.Parameter
    bias: nn.Parameter | None

    def _init_wn(self, shape: tuple[int, ...], bias: int | None) -> None:
        v = torch.randn(shape) * 0.01
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).view(-1, *([1] * (len(shape) - 1))))
        self.bias = nn.Parameter(torch.zeros(bias)) if bias is not None else None

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        return self.weight_g * v / norm


class WNConv1d(_WeightNorm):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self._init_wn((cout, cin, k), cout)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNorm):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int) -> None:
        super().__init__()
        self._init_wn((cin, cout, k), cout)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)


class Snake(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha) ** 2


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [WNConv1d(channels, channels, kernel, 1, (kernel * d - d) // 2, d) for d in dilations]
        )
        self.convs2 = nn.ModuleList([WNConv1d(channels, channels, kernel, 1, (kernel - 1) // 2) for _ in dilations])
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = x + c2(a2(c1(a1(x))))
        return x


class F0Predictor(nn.Module):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [WNConv1d(in_channels if i == 0 else channels, channels, 3, 1, 1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


class SourceModule(nn.Module):
    def __init__(self, cfg: HiftConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.l_linear = nn.Linear(cfg.nb_harmonics + 1, 1)

    def forward(self, f0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """f0 [B, 1, L] Hz at the sample rate -> excitation [B, 1, L]."""
        cfg = self.cfg
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, device=f0.device, dtype=f0.dtype)[None, :, None]
        phase = 2 * math.pi * (torch.cumsum(f0 * harmonics / cfg.sampling_rate, dim=-1) % 1)
        offset = (torch.rand(f0.shape[0], cfg.nb_harmonics + 1, 1, generator=generator) * 2 - 1) * math.pi
        offset[:, 0] = 0
        sines = cfg.nsf_alpha * torch.sin(phase + offset.to(f0.device, f0.dtype))
        voiced = (f0 > cfg.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = voiced * cfg.nsf_sigma + (1 - voiced) * cfg.nsf_alpha / 3
        noise = noise_amp * torch.randn(sines.shape, generator=generator).to(f0.device, f0.dtype)
        sines = sines * voiced + noise
        return torch.tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2)


class HiFTGenerator(nn.Module):
    def __init__(self, cfg: HiftConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        self.m_source = SourceModule(cfg)
        self.conv_pre = WNConv1d(cfg.in_channels, base, 7, 1, 3)
        self.ups = nn.ModuleList([
            WNConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, (k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        ])
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        down_rates = [1, *cfg.upsample_rates[::-1][:-1]]
        cumulative = np.cumprod(down_rates)[::-1]
        for i, (u, k, d) in enumerate(zip(cumulative, cfg.source_resblock_kernel_sizes,
                                           cfg.source_resblock_dilation_sizes, strict=True)):
            ch = base // 2 ** (i + 1)
            u = int(u)
            self.source_downs.append(nn.Conv1d(cfg.n_fft + 2, ch, 1, 1) if u == 1
                                     else nn.Conv1d(cfg.n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = base // 2 ** (i + 1)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(ch, k, d))
        self.conv_post = WNConv1d(ch, cfg.n_fft + 2, 7, 1, 3)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)
        self.window: torch.Tensor
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    @torch.inference_mode()
    def inference(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """mel [1, 80, T] -> waveform [1, T * 256]."""
        cfg = self.cfg
        f0 = self.f0_predictor(mel)
        f0 = f0[:, None].repeat_interleave(cfg.hop, dim=-1)
        source = self.m_source(f0, generator)
        spec = torch.stft(source[:, 0].float(), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.window.float(),
                          return_complex=True)
        s_stft = torch.cat([spec.real, spec.imag], dim=1).to(mel.dtype)
        x = self.conv_pre(mel)
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            total = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                total = total + self.resblocks[i * n_kernels + j](x)
            x = total / n_kernels
        x = self.conv_post(F.leaky_relu(x))
        half = cfg.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :half]).clamp(max=1e2).float()
        phase = torch.sin(x[:, half:]).float()
        audio = torch.istft(torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase)),
                            cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.window.float())
        return audio.clamp(-cfg.audio_limit, cfg.audio_limit)


def rename_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch's parametrized weight norm (`parametrizations.weight.original0/1`) -> `weight_g` / `weight_v`."""
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    return out
