"""Parley's configuration: TOML files validated into typed dataclasses.

Every table in a config file maps to one dataclass below. Validation happens once, at start-up, and every error
names the offending key (``[session].end_of_turn_ms``) so a typo never silently falls back to a default.
The ``[session]`` table is also what a client may override per call (``POST /offer`` and ``session.update``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

DEFAULT_INSTRUCTIONS = (
    "You are Parley, a friendly voice assistant on a phone-like call. Answer in one or two short spoken "
    "sentences. Never use lists, markdown, code or emoji. If you need the time, a date or arithmetic, "
    "call a tool."
)


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Sessions per worker process; beyond it POST /offer answers 503 with Retry-After.
    max_sessions: int = 4
    # Worker processes sharing the port (SO_REUSEPORT); 0 = one per CPU core.
    workers: int = 1
    max_body_bytes: int = 65536
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Turns authentication on (docs/SECURITY.md); PARLEY_API_KEY in the environment overrides it. Empty = open,
    # which server.py allows only on a loopback address unless --allow-unauthenticated is given.
    api_key: str = ""
    # Lifetime of a client secret from POST /v1/realtime/client_secrets (one call each).
    client_secret_ttl_s: float = 60.0
    # Web origins whose pages may call the call-starting endpoints from the browser (CORS), e.g.
    # ["https://app.example.com"]; "*" = any. Empty = only pages this server serves.
    cors_origins: list[str] = field(default_factory=list)
    # Per client address: POST /offer and WebSocket connects refill at rate_limit_per_minute, up to a burst of
    # rate_limit_burst; beyond it 429 with Retry-After. 0 = no limit.
    rate_limit_per_minute: float = 120.0
    rate_limit_burst: int = 40
    # A connection that has not sent a complete request this many seconds after connecting (or after its last
    # response) is closed: slow-header clients cannot hold sockets.
    header_timeout_s: float = 10.0
    # A WebSocket that has not identified itself (Twilio's `start`) within this many seconds is closed.
    ws_idle_timeout_s: float = 10.0
    # On SIGTERM: refuse new calls (503 + Retry-After, SIP 503), let live ones go on for up to this long, then exit.
    # 0 = exit at once. A second SIGTERM (or SIGINT) exits at once.
    drain_timeout_s: float = 30.0


@dataclass(frozen=True)
class IceServer:
    urls: list[str] = field(default_factory=list)
    username: str = ""
    credential: str = ""


@dataclass(frozen=True)
class IceConfig:
    # Host-candidate addresses. Empty = every address of every interface, loopback included (aioice
    # leaves loopback out, which breaks calls inside a namespace that has only `lo`).
    addresses: list[str] = field(default_factory=list)
    # Interface names to gather on (e.g. ["eth0", "lo"]); combined with `addresses`.
    interfaces: list[str] = field(default_factory=list)
    include_loopback: bool = True
    use_ipv6: bool = True
    # Announced as a server-reflexive candidate when the server sits behind a 1:1 NAT (cloud VMs).
    public_ip: str = ""
    # UDP port range for media sockets; 0/0 = any ephemeral port.
    port_min: int = 0
    port_max: int = 0
    # STUN/TURN servers; none by default so a deployment never talks to a third party it did not name.
    servers: list[IceServer] = field(default_factory=list)


@dataclass(frozen=True)
class WebRTCConfig:
    # aiortc's receive jitter buffer holds 4 packets (~80 ms) before releasing audio, for smooth playout.
    # Parley feeds a VAD and a tokenizer, which need order, not smoothness: 0 releases each in-order packet at
    # once (see realtime/transports/aiortc_tuning.py); N > 0 restores aiortc's buffer with prefetch N.
    receive_prefetch: int = 0
    # Close a call whose incoming audio stopped this long ago (a client that vanished without hanging up).
    media_timeout_ms: int = 10000
    # Outgoing audio pacing: frame length in ms (Opus at 48 kHz).
    frame_ms: int = 20


@dataclass(frozen=True)
class SessionConfig:
    """Per-session behaviour; every key may be overridden by a client per call."""

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "heart"
    speed: float = 1.0
    # Voice-control fields honoured by stacks that can (Step-Audio); others answer with a warning event.
    emotion: str = ""
    dialect: str = ""
    style: str = ""
    # Voice cloning: a base64 mono 16-bit WAV sample (a few seconds) and its transcript.
    clone_audio: str = ""
    clone_text: str = ""
    # Silence (ms after the last speech frame) that starts a speculative draft.
    speculate_after_ms: int = 200
    # Silence that ends the user's turn (turn_detection "silence"; "semantic" falls back to it while the
    # turn's score is not in yet).
    end_of_turn_ms: int = 700
    # How the end of a turn is decided: "silence" (end_of_turn_ms of it) or "semantic" (a model scores whether
    # the caller has finished; confident ends are answered after a short silence, unfinished sentences wait up
    # to max_end_of_turn_ms). See realtime/endpointing.py.
    turn_detection: Literal["silence", "semantic"] = "semantic"
    # Semantic turn detection: how readily a pause counts as the end of a turn (OpenAI's semantic_vad values).
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    # Semantic turn detection: the longest silence an unfinished-sounding turn is waited for.
    max_end_of_turn_ms: int = 2500
    # Speech within this long of a reply's start (after barge_in_ms of it) means the turn had not ended: the
    # reply is dropped and both parts become one user turn. 0 = such speech is an ordinary barge-in.
    resume_window_ms: int = 1000
    speculation: bool = True
    max_drafts_per_turn: int = 4
    # Speech needed while the assistant talks before it counts as barge-in (echo/noise guard).
    barge_in_ms: int = 300
    vad_threshold: float = 0.5
    # While the assistant talks the VAD threshold is raised by this much (echo guard).
    vad_threshold_while_speaking: float = 0.2
    # Speech shorter than this does not start a user turn (clicks, coughs).
    min_speech_ms: int = 64
    max_response_tokens: int = 120
    temperature: float = 0.3
    tools: bool = True
    tool_timeout_ms: int = 4000
    # Spoken while a tool runs longer than filler_after_ms; empty disables it.
    tool_filler: str = "One moment."
    filler_after_ms: int = 600
    # Context budget in LM tokens (system prompt included); oldest turns are trimmed first.
    context_tokens: int = 1536
    # Longest user turn kept in audio; longer speech forces an end of turn.
    max_turn_ms: int = 28000
    # Push-to-talk: the VAD opens no turns; the client commits the audio it sent and asks for each response
    # (OpenAI Realtime's `turn_detection: null`).
    manual_turns: bool = False
    # At a detected end of turn, answer it (False: the turn only enters the conversation).
    create_response: bool = True
    # The caller's speech stops a reply that is playing (barge-in).
    interrupt_response: bool = True
    # Replies in words only: no speech is synthesized (OpenAI Realtime's `output_modalities: ["text"]`).
    text_only: bool = False


@dataclass(frozen=True)
class EmbeddedStackConfig:
    lm: Literal["qwen2.5-0.5b", "smollm2-135m"] = "qwen2.5-0.5b"
    asr: Literal["whisper-base", "whisper-tiny.en"] = "whisper-base"
    language: str = "en"
    # The tokenizer stage transcribes the running turn every time this much new speech has arrived (0 = only at
    # pauses; the live transcript then appears once per pause).
    asr_segment_ms: int = 1000
    # Shortest Whisper encoder window, seconds (Whisper's own is 30). 5 s costs ~1/5 of 30 s per pass with the
    # same words on short turns (measured; see models/embedded/whisper.py); longer turns get a longer window.
    asr_window_s: float = 5.0
    # Decode only the words not yet agreed by two partial passes (local agreement, models/embedded/agreement.py):
    # the final pass then covers the turn's last second or two. false = every pass re-reads the whole turn.
    asr_incremental: bool = True
    asr_threads: int = 2
    lm_threads: int = 2
    lm_context: int = 2048
    tts_threads: int = 1
    # Whisper, the LM and the TTS take turns on the cores (one LM token, one Whisper step, one TTS sentence at a
    # time; a caller's final pass first) instead of running at once: OpenMP runtimes sharing cores spin against
    # each other (models/core_gate.py). false = every stage runs whenever it has work.
    stages_take_turns: bool = True
    # Show tool results to the LM as a short user note instead of the chat template's tool-response turn: small
    # models then say the answer instead of echoing JSON (see models/embedded/llama.py).
    tool_results_as_text: bool = True
    # Semantic turn detection also reads the transcript: the draft's LM scores how likely the caller's words end
    # there, averaged with Smart Turn's audio score (realtime/endpointing.py). false = the audio score alone.
    lm_turn_score: bool = True
    # Where setup assembled the models; empty = $PARLEY_MODELS or ~/.cache/parley/models.
    model_dir: str = ""


@dataclass(frozen=True)
class OpenAIStackConfig:
    # LM served elsewhere (vLLM, llama.cpp server); VAD, tokenizer and TTS stay embedded.
    base_url: str = "http://127.0.0.1:8000/v1"
    # Empty = the first model the server lists at /v1/models.
    model: str = ""
    # Environment variable holding the bearer token; unset or empty sends no Authorization header.
    api_key_env: str = "OPENAI_API_KEY"
    connect_timeout_s: float = 5.0
    # No token for this long mid-stream = failure.
    read_timeout_s: float = 30.0
    # Attempts after the first, only before the first token arrives (a stream that has spoken is never replayed).
    retries: int = 2
    retry_backoff_s: float = 0.25
    # Send tool schemas in the OpenAI "tools" format (needs server support: vLLM --enable-auto-tool-choice).
    tools: bool = True
    # "auto", "required", "none", or a function name to force.
    tool_choice: str = "auto"
    # Servers without a tool parser stream a call as content (`<tool_call>{...}` or a bare `{"name": ...}`):
    # a reply that starts that way is held back and parsed as a call.
    text_tool_calls: bool = True
    top_p: float = 0.9
    stop: list[str] = field(default_factory=list)
    # Open connections to the server per worker process (every live draft or response holds one).
    max_connections: int = 32
    # Merged into every request body (e.g. {"repetition_penalty" = 1.05} for vLLM).
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepAudioStackConfig:
    # Local copies of the release: Step-Audio-Tokenizer/, Step-Audio-Chat/, Step-Audio-TTS-3B/.
    tokenizer_dir: str = ""
    chat_dir: str = ""
    tts_dir: str = ""
    device: str = "cuda"
    # Per-stage placement; empty = `device`. The chat model is spread by `chat_device_map` instead.
    tokenizer_device: str = ""
    tts_device: str = ""
    # accelerate device map for the 130B chat model ("auto" spreads it over every visible GPU).
    chat_device_map: str = "auto"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # "transformers" runs Step-Audio-Chat in-process; "openai" sends <audio_N> text to [models.openai].
    chat_backend: Literal["transformers", "openai"] = "transformers"
    # "folder": the model folder's own modeling code (trust_remote_code, as the release loads it);
    # "builtin": Parley's re-implementation of Step1 (same tensor names) for folders whose code does not load.
    step1_code: Literal["folder", "builtin"] = "folder"
    # Tokenizer segment: one Paraformer chunk (240 ms) = 2 interleave groups.
    segment_ms: int = 240
    # The semantic (CosyVoice) tokenizer is not streaming: it runs on fixed windows of the turn, each with this
    # much left context. Multiples of 240 ms; window 30000 reproduces the release (one pass per turn).
    semantic_window_ms: int = 1200
    semantic_context_ms: int = 2400
    # Where the text kept in history comes from: "whisper" (the embedded faster-whisper, as the release's demo
    # uses a separate ASR), "chat" (Step-Audio-Chat transcribes with `asr_prompt`), "none" (a placeholder).
    transcript: Literal["whisper", "chat", "none"] = "whisper"
    asr_prompt: str = "请记录下你所听到的语音内容。"
    top_p: float = 0.9
    # TTS-3B: the release's prompt speaker and sampling.
    speaker: str = "Tingting"
    # Folder of prompt speakers laid out like the release's speakers/ (speakers_info.json, <id>_prompt.wav);
    # empty = <tts_dir>/speakers.
    speakers_dir: str = ""
    tts_temperature: float = 0.7
    tts_max_tokens: int = 2048
    # Streaming decoder: chunks are cut on whole 5-token groups (120 ms each); the first is shorter for latency.
    decoder_first_chunk_groups: int = 4
    decoder_chunk_groups: int = 10
    decoder_overlap_groups: int = 1
    flow_steps: int = 10
    flow_cfg_rate: float = 0.7


@dataclass(frozen=True)
class EchoStackConfig:
    # A cheap stack for capacity tests: Silero VAD, no ASR, a canned reply and a tone.
    reply: str = "I heard you."
    tone_hz: float = 440.0
    tone_ms: int = 1200


@dataclass(frozen=True)
class ModelsConfig:
    stack: Literal["embedded", "openai", "step-audio", "echo"] = "embedded"
    embedded: EmbeddedStackConfig = field(default_factory=EmbeddedStackConfig)
    openai: OpenAIStackConfig = field(default_factory=OpenAIStackConfig)
    step_audio: StepAudioStackConfig = field(default_factory=StepAudioStackConfig)
    echo: EchoStackConfig = field(default_factory=EchoStackConfig)


@dataclass(frozen=True)
class TelephonyNumber:
    """Session overrides applied to calls to one number (SIP Request-URI user part, or Twilio `To`).

    Numbers compare by their digits, so "+1 555 010 0100" matches a SIP user "15550100100"; a name without
    digits ("support") matches the SIP user part case-insensitively.
    """

    number: str = ""
    # Any [session] key: instructions (the system prompt), voice, speed, end_of_turn_ms, ...
    session: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TelephonyConfig:
    # Twilio Media Streams WebSocket at /telephony/twilio (+ TwiML at POST /telephony/twilio/twiml).
    twilio: bool = False
    # Public wss:// URL Twilio should stream to; empty = derived from the request's Host header.
    twilio_stream_url: str = ""
    # SIP user agent on UDP sip_host:sip_port; 0 = an ephemeral port (tests).
    sip: bool = False
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060
    # Address put in SDP answers and the Contact header; empty = sip_host (set it behind 1:1 NAT).
    rtp_public_ip: str = ""
    rtp_port_min: int = 20000
    rtp_port_max: int = 20999
    # G.711 codecs Parley accepts, in no order of its own: the caller's order of preference decides.
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA"])
    # Send reply RTP to the address the caller's RTP comes from rather than the one its SDP names (callers
    # behind NAT that do not know their public address).
    rtp_symmetric: bool = False
    # Source addresses (CIDR) whose SIP requests are served; the rest get 403 Forbidden.
    sip_allowed_sources: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # Digest authentication of INVITEs (RFC 3261 §22, MD5, qop=auth) when both are set; PARLEY_SIP_PASSWORD in
    # the environment overrides sip_digest_password.
    sip_digest_user: str = ""
    sip_digest_password: str = ""
    # Twilio's auth token: when set, the TwiML webhook needs a valid X-Twilio-Signature (else 403).
    twilio_auth_token: str = ""
    # The public URL Twilio calls for the TwiML webhook, as signed; empty = rebuilt from the request
    # (X-Forwarded-Proto / X-Forwarded-Host honoured, for a TLS proxy in front).
    twilio_webhook_url: str = ""
    # Hang up a call (SIP BYE, or close the WebSocket) when no media arrived for this long.
    media_timeout_ms: int = 10000
    numbers: list[TelephonyNumber] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    telephony: TelephonyConfig = field(default_factory=TelephonyConfig)


T = TypeVar("T")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config (errors name the file and the key); None gives the built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return validate(build(Config, raw, ""))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def build(cls: type[T], raw: Any, where: str) -> T:
    """Validate a mapping into dataclass `cls`; `where` is its dotted table path, used in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where or 'root'}] must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        listed = ", ".join(_key(where, k) for k in unknown)
        raise ConfigError(f"unknown key {listed} (known: {', '.join(sorted(names))})")
    return cls(**{name: _coerce(hints[name], raw[name], where, name) for name in raw})


def with_session_overrides(base: SessionConfig, overrides: dict[str, Any], where: str = "session") -> SessionConfig:
    """A copy of `base` with a client's overrides applied, validated like the config file."""
    merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(SessionConfig)}
    checked = build(SessionConfig, overrides, where)
    merged.update({k: getattr(checked, k) for k in overrides})
    return check_session(SessionConfig(**merged), where)


def check_session(s: SessionConfig, where: str = "session") -> SessionConfig:
    """Cross-field rules of [session] that types alone cannot express."""
    if s.speculate_after_ms < 0 or s.end_of_turn_ms <= 0:
        raise ConfigError(f"[{where}] speculate_after_ms must be >= 0 and end_of_turn_ms > 0")
    if s.speculate_after_ms >= s.end_of_turn_ms:
        raise ConfigError(
            f"[{where}].speculate_after_ms ({s.speculate_after_ms}) must be below "
            f"end_of_turn_ms ({s.end_of_turn_ms})"
        )
    # max_end_of_turn_ms below end_of_turn_ms is not an error: the wait is never shorter than end_of_turn_ms.
    if s.max_end_of_turn_ms <= 0 or s.resume_window_ms < 0:
        raise ConfigError(f"[{where}] max_end_of_turn_ms must be > 0 and resume_window_ms >= 0")
    if not 0.0 < s.vad_threshold < 1.0:
        raise ConfigError(f"[{where}].vad_threshold must be between 0 and 1, got {s.vad_threshold}")
    if not 0.5 <= s.speed <= 2.0:
        raise ConfigError(f"[{where}].speed must be between 0.5 and 2.0, got {s.speed}")
    if s.max_drafts_per_turn < 0 or s.barge_in_ms < 0 or s.max_response_tokens <= 0:
        raise ConfigError(f"[{where}] max_drafts_per_turn, barge_in_ms must be >= 0; max_response_tokens > 0")
    return s


def validate(config: Config) -> Config:
    """Checks that span tables; called by server start-up after load_config."""
    check_session(config.session)
    if config.server.max_sessions <= 0:
        raise ConfigError("[server].max_sessions must be > 0")
    if config.server.client_secret_ttl_s <= 0:
        raise ConfigError("[server].client_secret_ttl_s must be > 0")
    server = config.server
    if server.rate_limit_per_minute < 0 or server.rate_limit_burst < 0:
        raise ConfigError("[server] rate_limit_per_minute and rate_limit_burst must be >= 0 (0 = no limit)")
    if server.drain_timeout_s < 0:
        raise ConfigError("[server].drain_timeout_s must be >= 0")
    if server.header_timeout_s <= 0 or server.ws_idle_timeout_s <= 0:
        raise ConfigError("[server] header_timeout_s and ws_idle_timeout_s must be > 0")
    ice = config.ice
    if (ice.port_min or ice.port_max) and not 0 < ice.port_min <= ice.port_max <= 65535:
        raise ConfigError("[ice] port_min..port_max must be a valid range (1..65535), or both 0")
    check_telephony(config)
    return config


def check_telephony(config: Config) -> None:
    t = config.telephony
    bad = [c for c in t.codecs if c not in ("PCMU", "PCMA")]
    if bad or not t.codecs:
        raise ConfigError(f"[telephony].codecs must be a non-empty list of 'PCMU', 'PCMA'; got {t.codecs!r}")
    if not 0 <= t.sip_port <= 65535:
        raise ConfigError(f"[telephony].sip_port must be 0..65535, got {t.sip_port}")
    if not 0 < t.rtp_port_min <= t.rtp_port_max <= 65535:
        raise ConfigError("[telephony] rtp_port_min..rtp_port_max must be a valid range (1..65535)")
    if t.media_timeout_ms <= 0:
        raise ConfigError("[telephony].media_timeout_ms must be > 0")
    for source in t.sip_allowed_sources:
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise ConfigError(f"[telephony].sip_allowed_sources: {source!r} is not an address or CIDR "
                              "network") from None
    if bool(t.sip_digest_user) != bool(sip_digest_password(t)):
        raise ConfigError("[telephony] digest authentication needs both sip_digest_user and "
                          "sip_digest_password (or PARLEY_SIP_PASSWORD)")
    if t.sip and t.sip_host in ("0.0.0.0", "::", "") and not t.rtp_public_ip:
        raise ConfigError("[telephony].sip_host is a wildcard address: set rtp_public_ip to the address callers "
                          "should send RTP to (it goes into SDP answers and Contact)")
    seen: set[str] = set()
    for number in t.numbers:
        key = number_key(number.number)
        if not key or key in seen:
            raise ConfigError(f"[telephony.numbers] number {number.number!r} is empty or listed twice")
        seen.add(key)
        with_session_overrides(config.session, number.session, f"telephony.numbers.{number.number}.session")


def sip_digest_password(t: TelephonyConfig) -> str:
    """The environment wins over the TOML, so a password need not be written into a file."""
    return os.environ.get("PARLEY_SIP_PASSWORD", "") or t.sip_digest_password


def number_key(number: str) -> str:
    """Dialled numbers compare by their digits (`+1 555-0100` = `15550100`); names (`support`) as lower case."""
    digits = "".join(c for c in number if c.isdigit())
    return digits or number.strip().lower()


def _key(where: str, name: str) -> str:
    return f"[{where}].{name}" if where else name


def _coerce(tp: Any, value: Any, where: str, name: str) -> Any:
    key = _key(where, name)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, f"{where}.{name}" if where else name)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        return [_coerce(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unions are not supported in config")  # pragma: no cover - schema bug
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - schema bug
