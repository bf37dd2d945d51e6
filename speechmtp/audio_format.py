"""Output audio formats for streams: PCM16 / G.711 µ-law bytes at 8, 16, 24 or 48 kHz.

`AudioEncoder` is stateful: one per stream. Resampling goes through soxr's streaming resampler,
whose output over any chunking equals one call on the whole signal, so chunk seams cannot click.
"""
from __future__ import annotations

import numpy as np

from .utils import SpeechMTPError

FORMATS = ("pcm16", "mulaw")
SAMPLE_RATES = (8000, 16000, 24000, 48000)
MULAW_RATE = 8000  # G.711 is defined at 8 kHz; telephony stacks expect nothing else


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, clipped; rounding (not truncation) keeps silence at exactly 0."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def pcm16_to_float(x: np.ndarray | bytes) -> np.ndarray:
    if isinstance(x, (bytes, bytearray, memoryview)):
        x = np.frombuffer(x, dtype="<i2")
    return (np.asarray(x, dtype=np.float32) / 32767.0).astype(np.float32)


_MULAW_BIAS = 0x84


def pcm16_to_mulaw(x: np.ndarray) -> np.ndarray:
    """int16 -> G.711 µ-law bytes (uint8): the Sun/CCITT reference on the 14-bit value, vectorised
    (bit-identical to CPython's audioop.lin2ulaw)."""
    v = np.asarray(x, dtype=np.int32) >> 2  # 14-bit, rounding toward -inf like the reference
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(v), 8159) + (_MULAW_BIAS >> 2)  # 33 .. 8192
    seg = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 5, 0, 7)
    u = np.where(mag >= 8192, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))  # full scale saturates
    return ((u ^ mask) & 0xFF).astype(np.uint8)


def mulaw_to_pcm16(b: np.ndarray | bytes) -> np.ndarray:
    if isinstance(b, (bytes, bytearray, memoryview)):
        b = np.frombuffer(b, dtype=np.uint8)
    u = (~np.asarray(b, dtype=np.int32)) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def bytes_per_sample(fmt: str) -> int:
    return 2 if fmt == "pcm16" else 1


def decode_bytes(data: bytes, fmt: str) -> np.ndarray:
    """Wire bytes -> float32 samples (what a client does with each binary frame)."""
    pcm = np.frombuffer(data, dtype="<i2") if fmt == "pcm16" else mulaw_to_pcm16(data)
    return pcm16_to_float(pcm)


def check_format(fmt: str, sample_rate: int | None, native_rate: int) -> tuple[str, int]:
    """Validate a (format, rate) request; None rate -> the codec's rate (8 kHz for µ-law)."""
    if fmt not in FORMATS:
        raise SpeechMTPError(f"audio format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    if fmt == "mulaw":
        if sample_rate not in (None, MULAW_RATE):
            raise SpeechMTPError(f"mulaw audio is always {MULAW_RATE} Hz; got sample_rate {sample_rate}")
        return fmt, MULAW_RATE
    rate = native_rate if sample_rate is None else sample_rate
    if rate not in SAMPLE_RATES and rate != native_rate:
        raise SpeechMTPError(f"sample_rate {rate} is not supported; use one of {', '.join(map(str, SAMPLE_RATES))}")
    return fmt, int(rate)


class StreamResampler:
    """Stateful resampler: feed chunks, then `finish()`; the output equals one-shot resampling."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ"):
        self.in_rate, self.out_rate, self.quality = int(in_rate), int(out_rate), quality
        self._rs = None
        if self.in_rate != self.out_rate:
            import soxr

            self._rs = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._rs is None:
            return x
        return self._rs.resample_chunk(x, last=last)

    def finish(self) -> np.ndarray:
        """Drain the filter's tail; the resampler is then ready for a new stream."""
        if self._rs is None:
            return np.zeros(0, np.float32)
        out = self._rs.resample_chunk(np.zeros(0, np.float32), last=True)
        self._rs.clear()
        return out


class AudioEncoder:
    """float chunks at `in_rate` -> wire bytes in `fmt` at `out_rate`, continuous across chunks."""

    def __init__(self, in_rate: int, fmt: str = "pcm16", out_rate: int | None = None):
        self.fmt, self.out_rate = check_format(fmt, out_rate, in_rate)
        self.in_rate = int(in_rate)
        self._resampler = StreamResampler(self.in_rate, self.out_rate)

    def _to_bytes(self, y: np.ndarray) -> bytes:
        pcm = float_to_pcm16(y)
        if self.fmt == "mulaw":
            return pcm16_to_mulaw(pcm).tobytes()
        return pcm.astype("<i2").tobytes()

    def encode(self, x: np.ndarray) -> bytes:
        return self._to_bytes(self._resampler.process(x))

    def finish(self) -> bytes:
        """End of an utterance: the resampler's held-back tail (empty without resampling)."""
        return self._to_bytes(self._resampler.finish())

    def encode_all(self, x: np.ndarray) -> bytes:
        """Offline: one whole signal -> bytes, identical to streaming it in any chunks."""
        return self.encode(x) + self.finish()
