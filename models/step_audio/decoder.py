"""The speech decoder (CosyVoice-300M-25Hz: flow matching + HiFT, 22.05 kHz), loaded from a release folder and
run in chunks cut on whole 5-token groups.

The release decodes a whole utterance at once. Here audio leaves as soon as a chunk of groups is decoded: the
first chunk is short (`decoder_first_chunk_groups`) for a quick first sound, later ones longer. Each chunk is
decoded with `decoder_overlap_groups` of the previous chunk's groups in front as context; the audio of those
overlap groups, decoded twice, is cross-faded (raised cosine) between the two chunks, and a chunk holds back its
own last overlap groups for the next cross-fade. The speaker prompt (tokens, mel, CAM++ x-vector) conditions every
chunk, as it conditions the whole utterance in the release.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.step_audio import audio_tokens as fmt
from models.step_audio.fbank import fbank
from models.step_audio.flow import FlowConfig, MaskedDiffWithXvec
from models.step_audio.hift import HiftConfig, HiFTGenerator, rename_weight_norm
from models.step_audio.mel import matcha_mel
from models.step_audio.semantic import onnx_session
from realtime.audio import resample

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
REQUIRED = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")


@dataclass(frozen=True)
class SpeakerPrompt:
    """Everything a voice needs: its sample's transcript, joint codes, 22.05 kHz mel and x-vector."""

    name: str
    text: str
    codes: tuple[int, ...]
    feat: np.ndarray  # [frames, 80]
    embedding: np.ndarray  # [192]


# --- a tolerant reader for hyperpyyaml files: tags are dropped, `!ref <key>` resolved ------------------------------


def read_hyperpyyaml(path: Path) -> dict[str, Any]:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("!", construct)
    data = yaml.load(path.read_text(), Loader=Loader)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("<") and value.endswith(">") and value[1:-1] in data:
            return resolve(data[value[1:-1]])
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    resolved: dict[str, Any] = resolve(data)
    return resolved


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def configs_from_yaml(conf: dict[str, Any], cfg_rate: float) -> tuple[FlowConfig, HiftConfig]:
    flow = conf.get("flow") or {}
    enc = flow.get("encoder") or {}
    est = _get(flow, "decoder", "estimator", default={}) or {}
    defaults = FlowConfig()
    flow_cfg = FlowConfig(
        input_size=int(flow.get("input_size", defaults.input_size)),
        output_size=int(flow.get("output_size", defaults.output_size)),
        spk_embed_dim=int(flow.get("spk_embed_dim", defaults.spk_embed_dim)),
        vocab_size=int(flow.get("vocab_size", fmt.AUDIO_CODES)),
        input_frame_rate=float(flow.get("input_frame_rate", fmt.TOKENS_PER_SECOND)),
        encoder_output_size=int(enc.get("output_size", defaults.encoder_output_size)),
        encoder_heads=int(enc.get("attention_heads", defaults.encoder_heads)),
        encoder_linear_units=int(enc.get("linear_units", defaults.encoder_linear_units)),
        encoder_blocks=int(enc.get("num_blocks", defaults.encoder_blocks)),
        regulator_ratios=len(_get(flow, "length_regulator", "sampling_ratios", default=[1, 1, 1, 1])),
        channels=tuple(int(c) for c in est.get("channels", defaults.channels)),
        attention_head_dim=int(est.get("attention_head_dim", defaults.attention_head_dim)),
        n_blocks=int(est.get("n_blocks", defaults.n_blocks)),
        num_mid_blocks=int(est.get("num_mid_blocks", defaults.num_mid_blocks)),
        num_heads=int(est.get("num_heads", defaults.num_heads)),
        cfg_rate=cfg_rate,
    )
    hift = conf.get("hift") or {}
    hd = HiftConfig()
    istft = hift.get("istft_params") or {}

    def tup(key: str, default: tuple[Any, ...]) -> tuple[Any, ...]:
        value = hift.get(key)
        if value is None:
            return default
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)

    hift_cfg = HiftConfig(
        in_channels=int(hift.get("in_channels", hd.in_channels)),
        base_channels=int(hift.get("base_channels", hd.base_channels)),
        nb_harmonics=int(hift.get("nb_harmonics", hd.nb_harmonics)),
        sampling_rate=int(hift.get("sampling_rate", conf.get("sample_rate", hd.sampling_rate))),
        nsf_alpha=float(hift.get("nsf_alpha", hd.nsf_alpha)),
        nsf_sigma=float(hift.get("nsf_sigma", hd.nsf_sigma)),
        nsf_voiced_threshold=float(hift.get("nsf_voiced_threshold", hd.nsf_voiced_threshold)),
        upsample_rates=tup("upsample_rates", hd.upsample_rates),
        upsample_kernel_sizes=tup("upsample_kernel_sizes", hd.upsample_kernel_sizes),
        n_fft=int(istft.get("n_fft", hd.n_fft)),
        hop_len=int(istft.get("hop_len", hd.hop_len)),
        resblock_kernel_sizes=tup("resblock_kernel_sizes", hd.resblock_kernel_sizes),
        resblock_dilation_sizes=tup("resblock_dilation_sizes", hd.resblock_dilation_sizes),
        source_resblock_kernel_sizes=tup("source_resblock_kernel_sizes", hd.source_resblock_kernel_sizes),
        source_resblock_dilation_sizes=tup("source_resblock_dilation_sizes", hd.source_resblock_dilation_sizes),
        lrelu_slope=float(hift.get("lrelu_slope", hd.lrelu_slope)),
        audio_limit=float(hift.get("audio_limit", hd.audio_limit)),
        f0_cond_channels=int(_get(hift, "f0_predictor", "cond_channels", default=hd.f0_cond_channels)),
    )
    return flow_cfg, hift_cfg


class CosyVoiceDecoder:
    def __init__(self, flow: MaskedDiffWithXvec, hift: HiFTGenerator, campplus: Any, device: str,
                 dtype: torch.dtype, steps: int, name: str = "") -> None:
        self.flow = flow.to(device=device, dtype=dtype).eval()
        # HiFT runs in float32 (the release too): its iSTFT and exp() are not safe in bf16.
        self.hift = hift.to(device=device).float().eval()
        self.campplus = campplus
        self.device = torch.device(device)
        self.dtype = dtype
        self.steps = steps
        self.name = name
        self.lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, device: str, dtype: torch.dtype, steps: int, cfg_rate: float) -> CosyVoiceDecoder:
        missing = [f for f in REQUIRED if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (a CosyVoice-300M-25Hz folder)")
        flow_cfg, hift_cfg = configs_from_yaml(read_hyperpyyaml(folder / "cosyvoice.yaml"), cfg_rate)
        flow_state = torch.load(folder / "flow.pt", map_location="cpu", weights_only=True)
        vocab = flow_state.get("input_embedding.weight")
        if vocab is not None and vocab.shape[0] != flow_cfg.vocab_size:
            log.info("%s: flow vocabulary %d from flow.pt (yaml says %d)", folder, vocab.shape[0], flow_cfg.vocab_size)
            flow_cfg = FlowConfig(**{**flow_cfg.__dict__, "vocab_size": int(vocab.shape[0])})
        flow = MaskedDiffWithXvec(flow_cfg)
        flow.load_state_dict(flow_state, strict=True)
        hift = HiFTGenerator(hift_cfg)
        hift.load_state_dict(rename_weight_norm(torch.load(folder / "hift.pt", map_location="cpu",
                                                           weights_only=True)), strict=True)
        campplus = onnx_session(folder / "campplus.onnx", "cpu")  # the release runs CAM++ on the CPU too
        return cls(flow, hift, campplus, device, dtype, steps, folder.name)

    # --- prompts --------------------------------------------------------------------------------------------

    def speaker_embedding(self, audio16k: np.ndarray) -> np.ndarray:
        feats = fbank(audio16k, window_kind="povey")
        feats = feats - feats.mean(axis=0, keepdims=True)
        name = self.campplus.get_inputs()[0].name
        return np.asarray(self.campplus.run(None, {name: feats[None].astype(np.float32)})[0]).reshape(-1)

    def prompt(self, name: str, text: str, audio16k: np.ndarray, codes: list[int]) -> SpeakerPrompt:
        feat = matcha_mel(resample(audio16k, 16000, SAMPLE_RATE)).T
        return SpeakerPrompt(name, text, tuple(codes), feat, self.speaker_embedding(audio16k))

    # --- synthesis ------------------------------------------------------------------------------------------

    def synthesize(self, codes: list[int], prompt: SpeakerPrompt, seed: int = 0) -> np.ndarray:
        """Joint codes -> float32 audio at 22.05 kHz (one flow + vocoder pass)."""
        if not codes:
            return np.zeros(0, np.float32)
        gen = torch.Generator().manual_seed(seed)
        dev, dt = self.device, self.dtype
        tokens = torch.tensor([codes], device=dev)
        prompt_tokens = torch.tensor([list(prompt.codes)], device=dev, dtype=torch.long).reshape(1, -1)
        feat = torch.from_numpy(prompt.feat[None]).to(dev, dt)
        emb = torch.from_numpy(prompt.embedding[None].astype(np.float32)).to(dev, dt)
        with self.lock:
            mel = self.flow.inference(tokens, prompt_tokens, feat, emb, self.steps, gen)
            audio = self.hift.inference(mel.float(), gen)
        return audio[0].float().cpu().numpy()


# --- chunking on whole groups, with overlap and cross-fade --------------------------------------------------------


@dataclass(frozen=True)
class ChunkPlan:
    first_chunk: int = 4
    chunk: int = 10
    overlap: int = 1

    def __post_init__(self) -> None:
        if self.overlap < 0 or self.first_chunk <= self.overlap or self.chunk <= self.overlap:
            raise ValueError("decoder chunks must be longer than their overlap (in groups)")

    def ready(self, emitted_groups: int, available_groups: int) -> int:
        """Groups the next non-final chunk covers (0 while too few are available)."""
        size = self.first_chunk if emitted_groups == 0 else self.chunk
        return size if available_groups - emitted_groups >= size else 0


def raised_cosine(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / max(n, 1))).astype(np.float32)


def crossfade(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Fade `tail` out while `head` fades in; the result is as long as the shorter of the two."""
    n = min(tail.size, head.size)
    ramp = raised_cosine(n)
    return tail[:n] * (1.0 - ramp) + head[:n] * ramp


class StreamingDecode:
    """Feed joint codes as the TTS model makes them; get audio chunks as soon as whole chunks are decoded."""

    def __init__(self, decoder: CosyVoiceDecoder, prompt: SpeakerPrompt, plan: ChunkPlan, seed: int = 0) -> None:
        self.decoder = decoder
        self.prompt = prompt
        self.plan = plan
        self.seed = seed
        self.codes: list[int] = []
        self.emitted_groups = 0
        self.chunks: list[tuple[int, int]] = []  # (first group, end group) of each decoded chunk, for tests
        self._tail = np.zeros(0, np.float32)

    def push(self, codes: list[int]) -> Iterator[np.ndarray]:
        self.codes.extend(codes)
        while (size := self.plan.ready(self.emitted_groups, len(self.codes) // fmt.GROUP_TOKENS)) > 0:
            yield from self._decode(self.emitted_groups, self.emitted_groups + size, final=False)

    def finish(self) -> Iterator[np.ndarray]:
        end = math.ceil(len(self.codes) / fmt.GROUP_TOKENS)
        if end > self.emitted_groups:
            yield from self._decode(self.emitted_groups, end, final=True)
        elif self._tail.size:
            yield self._tail
            self._tail = np.zeros(0, np.float32)

    def _decode(self, first: int, end: int, final: bool) -> Iterator[np.ndarray]:
        o = self.plan.overlap if first > 0 else 0
        start = first - o
        window = self.codes[start * fmt.GROUP_TOKENS : end * fmt.GROUP_TOKENS]
        audio = self.decoder.synthesize(window, self.prompt, self.seed + len(self.chunks))
        groups = end - start

        def at(g: int) -> int:
            return round(audio.size * (g - start) / groups)

        head = audio[: at(first)]
        keep = end if final else end - self.plan.overlap
        body = audio[at(first) : at(keep)]
        pieces = [crossfade(self._tail, head)] if o and self._tail.size else []
        pieces.append(body)
        self._tail = np.zeros(0, np.float32) if final else audio[at(keep) :]
        self.chunks.append((first, end))
        self.emitted_groups = end
        out = np.concatenate(pieces).astype(np.float32)
        if out.size:
            yield out
