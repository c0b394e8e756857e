"""Tiny, randomly initialised stand-ins for the three Step-Audio folders, laid out and named like the release.

Used by the tests and `python -m models.step_audio.selfcheck` to run the real loading code and the whole
pipeline on a CPU in seconds. Every file the loaders read exists with the release's name and format: a funasr
Paraformer folder (config.yaml, model.pt with `encoder.*` tensors, am.mvn), k-means centroids, ONNX graphs with
the CosyVoice tokenizer's and CAM++'s input/output signatures, Step1 folders (config.json with `auto_map`,
`modeling_step1.py`, a tokenizer whose `<|BOT|>`, `<|EOT|>` and `<audio_N>` sit at the release's ids,
safetensors), CosyVoice folders (hyperpyyaml cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx) and a speakers
folder. Only the sizes are small; the numbers mean nothing, so the audio is noise and the text gibberish.

Two deliberate biases keep runs short and predictable: the TTS model's output layer favours audio ids (it writes
audio until its token budget ends) and the chat model's favours lowercase letters and spaces.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.step_audio import audio_tokens as fmt
from models.step_audio import paths
from models.step_audio.fbank import write_am_mvn
from models.step_audio.flow import FlowConfig, MaskedDiffWithXvec
from models.step_audio.hift import HiftConfig, HiFTGenerator
from models.step_audio.paraformer import SanmConfig, SanmEncoder
from models.step_audio.speakers import write_wav
from models.step_audio.step1 import Step1Config, Step1ForCausalLM

SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|EOT|>": 3, "<|BOT|>": 4}
BYTE_BASE = 5
SPEAKER = "Tingting"


@dataclass(frozen=True)
class SyntheticFolders:
    root: Path
    tokenizer_dir: Path
    chat_dir: Path
    tts_dir: Path
    speakers_dir: Path


def build(root: Path, seed: int = 0) -> SyntheticFolders:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_folder(root / "Step-Audio-Tokenizer", rng)
    chat = _step1_folder(root / "Step-Audio-Chat", bias="text")
    tts = _step1_folder(root / "Step-Audio-TTS-3B", bias="audio")
    for music in (False, True):
        _cosyvoice_folder(tts / (paths.MUSIC_DECODER if music else paths.COMMON_DECODER))
    speakers = _speakers(tts / "speakers", rng)
    return SyntheticFolders(root, tok, chat, tts, speakers)


# --- Step-Audio-Tokenizer ---------------------------------------------------------------------------------------

SANM = SanmConfig(output_size=32, attention_heads=2, linear_units=64, num_blocks=3)


def _tokenizer_folder(root: Path, rng: np.random.Generator) -> Path:
    import yaml

    para = root / paths.PARAFORMER
    para.mkdir(parents=True, exist_ok=True)
    conf = {
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {"output_size": SANM.output_size, "attention_heads": SANM.attention_heads,
                         "linear_units": SANM.linear_units, "num_blocks": SANM.num_blocks, "kernel_size": 11,
                         "sanm_shfit": 0, "input_layer": "pe_online"},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6},
    }
    (para / "config.yaml").write_text(yaml.safe_dump(conf))
    encoder = SanmEncoder(SANM)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["decoder.embed.0.weight"] = torch.zeros(4, 4)  # the ASR decoder the tokenizer does not use
    torch.save(state, para / "model.pt")
    # Roughly the statistics of Kaldi log-mel energies of speech at int16 scale, so the encoder sees unit-ish input.
    write_am_mvn(para / "am.mvn", np.full(560, -10.0, np.float32), np.full(560, 0.3, np.float32))
    np.save(root / "linguistic_tokenizer.npy", rng.standard_normal((fmt.LINGUISTIC_CODES, SANM.output_size))
            .astype(np.float32))
    _semantic_onnx(root / "speech_tokenizer_v1.onnx", rng)
    return root


def _semantic_onnx(path: Path, rng: np.random.Generator) -> None:
    """feats [1, 128, T] + feats_length [1] -> indices [1, T / 4]: a stride-4 conv, a projection, argmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv = numpy_helper.from_array(rng.standard_normal((32, 128, 4)).astype(np.float32) * 0.1, "conv_w")
    proj = numpy_helper.from_array(rng.standard_normal((32, fmt.SEMANTIC_CODES)).astype(np.float32), "proj_w")
    nodes = [
        helper.make_node("Conv", ["feats", "conv_w"], ["h"], kernel_shape=[4], strides=[4]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["ht", "proj_w"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["indices"], axis=2, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "speech_tokenizer_v1_synthetic",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "N"])],
        initializer=[conv, proj],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


# --- Step1 folders (chat and TTS) -----------------------------------------------------------------------------


def _step1_folder(root: Path, bias: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = Step1Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_attention_groups=2,
                         num_hidden_layers=2, vocab_size=fmt.TTS_VOCAB, max_seq_len=4096)
    model = Step1ForCausalLM(config)
    with torch.no_grad():
        weight = model.lm_head.weight
        keep = torch.zeros(weight.shape[0], dtype=torch.bool)
        if bias == "audio":
            keep[fmt.AUDIO_ID_BASE : fmt.AUDIO_ID_BASE + fmt.AUDIO_CODES] = True
        else:
            for ch in "abcdefghijklmnopqrstuvwxyz ":
                keep[BYTE_BASE + ord(ch)] = True
        weight[~keep] = 0.0
        weight[keep] *= 40.0
    model.save_pretrained(root)
    shutil.copy(Path(__file__).with_name("step1.py"), root / "modeling_step1.py")
    cfg = json.loads((root / "config.json").read_text())
    cfg["architectures"] = ["Step1ForCausalLM"]
    cfg["auto_map"] = {"AutoConfig": "modeling_step1.Step1Config",
                       "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM"}
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    _tokenizer(root)
    return root


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the byte-level tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTES_TO_UNICODE = _bytes_to_unicode()


def _tokenizer(root: Path) -> None:
    """A byte-level tokenizer with Step-Audio's special and audio tokens at their ids, saved for AutoTokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIALS)
    for b in range(256):
        vocab[_BYTES_TO_UNICODE[b]] = BYTE_BASE + b
    for i in range(BYTE_BASE + 256, fmt.AUDIO_ID_BASE):
        vocab[f"<|reserved_{i}|>"] = i
    audio = [f"<audio_{i}>" for i in range(fmt.TTS_VOCAB - fmt.AUDIO_ID_BASE)]
    for i, token in enumerate(audio):
        vocab[token] = fmt.AUDIO_ID_BASE + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (*SPECIALS, *audio)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|EOT|>", unk_token="<unk>")
    fast.save_pretrained(root)


# --- CosyVoice folders ----------------------------------------------------------------------------------------

FLOW = FlowConfig(input_size=32, vocab_size=fmt.AUDIO_CODES, input_frame_rate=fmt.TOKENS_PER_SECOND,
                  encoder_output_size=32, encoder_heads=2, encoder_linear_units=64, encoder_blocks=2,
                  channels=(16, 16), attention_head_dim=8, n_blocks=1, num_mid_blocks=1, num_heads=2)
HIFT = HiftConfig(base_channels=16, f0_cond_channels=16, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),),
                  source_resblock_kernel_sizes=(7, 3), source_resblock_dilation_sizes=((1,), (1,)))

COSYVOICE_YAML = f"""# synthetic, shaped like CosyVoice's hyperpyyaml
sample_rate: 22050
spk_embed_dim: 192
flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {FLOW.input_size}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {FLOW.vocab_size}
    input_frame_rate: {FLOW.input_frame_rate}
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: {FLOW.encoder_output_size}
        attention_heads: {FLOW.encoder_heads}
        linear_units: {FLOW.encoder_linear_units}
        num_blocks: {FLOW.encoder_blocks}
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {FLOW.input_size}
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                inference_cfg_rate: 0.7
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{FLOW.channels[0]}, {FLOW.channels[1]}]
            attention_head_dim: {FLOW.attention_head_dim}
            n_blocks: {FLOW.n_blocks}
            num_mid_blocks: {FLOW.num_mid_blocks}
            num_heads: {FLOW.num_heads}
            act_fn: 'gelu'
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {HIFT.base_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1, 3]]
    source_resblock_kernel_sizes: [7, 3]
    source_resblock_dilation_sizes: [[1], [1]]
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {HIFT.f0_cond_channels}
"""


def _cosyvoice_folder(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cosyvoice.yaml").write_text(COSYVOICE_YAML)
    torch.save(MaskedDiffWithXvec(FLOW).state_dict(), root / "flow.pt")
    torch.save(HiFTGenerator(HIFT).state_dict(), root / "hift.pt")
    _campplus_onnx(root / "campplus.onnx")


def _campplus_onnx(path: Path) -> None:
    """fbank [1, T, 80] -> x-vector [1, 192]: mean over time, a projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((80, 192)).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["embedding"])]
    graph = helper.make_graph(nodes, "campplus_synthetic",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 192])],
                              initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _speakers(root: Path, rng: np.random.Generator) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    info = {SPEAKER: "你好，我是婷婷。", f"{SPEAKER}RAP": "说唱一段。", f"{SPEAKER}哼唱": "哼一段。"}
    (root / "speakers_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    for name in info:
        write_wav(root / f"{name}_prompt.wav", voice_like(1.2, rng), 16000)
    return root


def voice_like(seconds: float, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """A buzzy, syllable-paced signal with silence at both ends (enough for VAD-free unit tests)."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    envelope[: rate // 10] = 0
    envelope[-rate // 10 :] = 0
    noise = rng.standard_normal(t.size) * 0.01
    return (0.3 * tone * envelope / 2.6 + noise).astype(np.float32)
