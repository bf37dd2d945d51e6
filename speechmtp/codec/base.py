"""The codec interface every backend implements.

A codec turns audio into integer codes of shape (B, Q, T) — Q codebooks, T frames — and back.
`stream_decoder()` decodes the same codes a few frames at a time; concatenating every `push`
output and the final `flush` equals `decode` of all frames (the tests hold every backend to it).
"""
from __future__ import annotations

import abc

import numpy as np
import torch

from ..utils import SpeechMTPError, resample


class StreamDecoder(abc.ABC):
    """Stateful frame-by-frame decoder. One per stream; `reset()` makes it new again."""

    @abc.abstractmethod
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, Q, t) with t >= 1 -> the waveform (B, 1, n) that these frames complete."""

    @abc.abstractmethod
    def flush(self) -> torch.Tensor:
        """End of stream: the waveform (B, 1, n) still held back (may be empty)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget all state, ready for a new stream."""


class Codec(abc.ABC):
    name: str
    sample_rate: int
    frame_rate: float
    n_codebooks: int
    codebook_size: int
    device: torch.device

    @property
    def hop_length(self) -> int:
        """Audio samples per frame."""
        return int(round(self.sample_rate / self.frame_rate))

    def code_modules(self) -> list[torch.nn.Module]:
        """The modules the codes depend on; the token cache's key hashes their weights. Default: every
        module the codec holds. A codec whose decoder can change without changing its codes names fewer."""
        mods = [v for k, v in sorted(vars(self).items()) if isinstance(v, torch.nn.Module) and not k.startswith("_")]
        return mods + [self] if isinstance(self, torch.nn.Module) else mods

    @abc.abstractmethod
    def encode(self, wav: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> torch.Tensor:
        """Audio (N,), (C, N) or (B, C, N) at `sample_rate` (default: the codec's) -> codes int64 (B, Q, T)."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes int64 (B, Q, T) -> waveform float32 (B, 1, N)."""

    @abc.abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        ...

    # -- shared input checking, so every backend gives the same clear errors -------------------
    def _prepare_wav(self, wav: torch.Tensor | np.ndarray, sample_rate: int | None) -> torch.Tensor:
        """Any shape/rate/dtype the interface accepts -> float32 mono (B, 1, N) at the codec's rate."""
        if isinstance(wav, np.ndarray):
            if not np.issubdtype(wav.dtype, np.number):
                raise SpeechMTPError(f"audio must be numeric, got dtype {wav.dtype}")
            wav = torch.from_numpy(np.ascontiguousarray(wav))
        if not isinstance(wav, torch.Tensor):
            raise SpeechMTPError(f"audio must be a torch.Tensor or numpy array, got {type(wav).__name__}")
        if wav.is_complex() or wav.dtype == torch.bool:
            raise SpeechMTPError(f"audio must be real-valued, got dtype {wav.dtype}")
        if not wav.is_floating_point():  # integer PCM: scale to [-1, 1]
            wav = wav.float() / float(torch.iinfo(wav.dtype).max)
        wav = wav.float()
        if wav.dim() == 1:
            wav = wav[None, None]
        elif wav.dim() == 2:
            wav = wav[None]
        elif wav.dim() != 3:
            raise SpeechMTPError(f"audio must have shape (N,), (C, N) or (B, C, N); got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise SpeechMTPError("audio is empty (0 samples)")
        if not torch.isfinite(wav).all():
            raise SpeechMTPError("audio contains NaN or infinite samples")
        wav = wav.mean(dim=1, keepdim=True)  # (B, 1, N): the codecs here are mono
        sr = self.sample_rate if sample_rate is None else int(sample_rate)
        if sr <= 0:
            raise SpeechMTPError(f"sample rate must be positive, got {sample_rate}")
        if sr != self.sample_rate:
            b = wav.shape[0]
            out = resample(wav.reshape(b, -1).cpu().numpy(), sr, self.sample_rate)
            wav = torch.from_numpy(np.ascontiguousarray(out)).reshape(b, 1, -1)
        return wav.to(self.device)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise SpeechMTPError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.is_complex() or codes.dtype == torch.bool:
            raise SpeechMTPError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise SpeechMTPError(
                f"codes must have shape (B, {self.n_codebooks}, T) for this codec; got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise SpeechMTPError(
                f"codes must lie in [0, {self.codebook_size}); got values in [{int(codes.min())}, {int(codes.max())}]")
        return codes.long().to(self.device)
