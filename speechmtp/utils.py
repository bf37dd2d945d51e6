"""Small shared helpers: device choice, atomic writes, safe checkpoints, audio files.

Everything here is I/O or plumbing with no model logic, so every other module may import it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class SpeechMTPError(Exception):
    """An error whose message is meant for the user: it names what is wrong and what to do."""


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU; an explicit `device` ("cpu", "cuda", "cuda:1") wins."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpeechMTPError(f"--device {device} was asked for, but CUDA is not available here; use --device cpu")
    return dev


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; shipped weights must be readable by everyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file and a rename (for optimizer/RNG state, which is not plain tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SpeechMTPError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpeechMTPError(f"weights file {path} is corrupt or not a safetensors file ({e}); re-create or re-copy it") from e


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_config(cls: type, path: str | os.PathLike):
    """Rebuild a dataclass config from JSON, ignoring keys a newer/older version does not know."""
    path = Path(path)
    if not path.is_file():
        raise SpeechMTPError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpeechMTPError(f"config file {path} is not valid JSON ({e})") from e
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def read_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read any audio file soundfile understands -> float32 (C, N) (or (N,) when mono), resampled if asked."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise SpeechMTPError(f"audio file not found: {path}")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except Exception as e:  # soundfile raises several types for broken files
        raise SpeechMTPError(f"cannot read audio file {path}: {e}") from e
    wav = wav.T  # (C, N)
    if wav.shape[1] == 0:
        raise SpeechMTPError(f"audio file {path} is empty")
    if mono:
        wav = wav.mean(axis=0)
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(wav, dtype=np.float32), sr


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return wav
    # soxr directly (what librosa's "soxr_hq" calls, bit-identical): librosa's first call costs ~5 s of imports.
    import soxr

    x = np.asarray(wav, dtype=np.float32)
    out = soxr.resample(x.T, orig_sr, target_sr, quality="soxr_hq").T  # soxr wants (N, C)
    return np.ascontiguousarray(out, dtype=np.float32)


def write_audio(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write mono or (C, N) float audio as 16-bit WAV, atomically."""
    import io

    import soundfile as sf

    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.T  # soundfile wants (N, C)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())
