"""G.711 µ-law (PCMU) and A-law (PCMA) as numpy lookup tables.

Python 3.13 removed `audioop`; libavcodec has the codecs too, but a frame is 160 bytes and a table lookup costs a
few microseconds where a codec context round trip costs tens. The tables are computed once, at import, from the
companding rules of ITU-T G.711 (not copied from anywhere), and a test checks them against libavcodec.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Codec = Literal["PCMU", "PCMA"]
CODECS: tuple[Codec, ...] = ("PCMU", "PCMA")
STATIC_PAYLOAD_TYPES: dict[Codec, int] = {"PCMU": 0, "PCMA": 8}
RATE = 8000

_BIAS = 0x84
_CLIP = 32635


def _mulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _mulaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), _CLIP) + _BIAS
    # The segment is the position of the highest set bit above bit 7.
    exponent = np.clip(np.floor(np.log2(magnitude >> 7 | 1)).astype(np.int32), 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return _by_uint16(code.astype(np.uint8))


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(segment == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(segment - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1) >> 3  # 13-bit magnitude
    segment = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4)
    mantissa = np.where(segment == 0, magnitude >> 1, magnitude >> np.maximum(segment, 0)) & 0x0F
    code = ((segment << 4) | mantissa) ^ mask
    return _by_uint16(code.astype(np.uint8))


def _by_uint16(codes_by_int16: np.ndarray) -> np.ndarray:
    """Reindex a table built over -32768..32767 so an int16 array viewed as uint16 indexes it directly."""
    return np.roll(codes_by_int16, -32768)


_DECODE = {"PCMU": _mulaw_decode_table(), "PCMA": _alaw_decode_table()}
_ENCODE = {"PCMU": _mulaw_encode_table(), "PCMA": _alaw_encode_table()}
# What each codec sends for digital silence: repeating it keeps an idle stream bit-exact silent.
SILENCE_BYTE = {codec: int(_ENCODE[codec][0]) for codec in CODECS}


def decode(payload: bytes, codec: Codec) -> np.ndarray:
    """G.711 bytes to int16 samples."""
    return _DECODE[codec][np.frombuffer(payload, np.uint8)]


def encode(samples: np.ndarray, codec: Codec) -> bytes:
    """Float32 in [-1, 1] (or int16) samples to G.711 bytes."""
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    return _ENCODE[codec][samples.view(np.uint16)].tobytes()
