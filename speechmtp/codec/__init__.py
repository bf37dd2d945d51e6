"""Audio codecs: audio <-> integer codes (B, Q, T), offline and streaming. `load_codec` picks a backend.

Backends are imported lazily so that using one never needs the other's dependencies.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..utils import SpeechMTPError
from .base import Codec, StreamDecoder

__all__ = ["Codec", "StreamDecoder", "load_codec", "codecs_dir"]


def codecs_dir() -> Path:
    """The repository's codecs/ data folder (named built-in codecs live there)."""
    import speechmtp

    return Path(speechmtp.__file__).resolve().parents[1] / "codecs"


def _parse_encodec(spec: str) -> float:
    _, _, bw = spec.partition(":")
    if not bw:
        return 6.0
    try:
        return float(bw)
    except ValueError:
        raise SpeechMTPError(f"bad codec spec {spec!r}: the part after 'encodec:' is the bandwidth in kbps, "
                             "e.g. encodec:6") from None


def _find_folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, codecs_dir() / path]
    for folder in candidates:
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise SpeechMTPError(
                    f"codec folder {folder} has no config.json; a built-in codec folder holds config.json and "
                    "model.safetensors (train one with `speechmtp codec train`)")
            return folder
    raise SpeechMTPError(
        f"codec {spec!r} not found; looked for a folder at: {', '.join(str(c) for c in candidates)}. "
        "Give 'encodec' / 'encodec:BW' (BW in 1.5, 3, 6, 12, 24 kbps), a built-in codec folder, or the name of "
        f"one under {codecs_dir()} (see codecs/README.md)")


def load_codec(spec: str, device: str | torch.device | None = None, encodec_weights: str | None = None) -> Codec:
    """'encodec' / 'encodec:BW' -> EnCodec 24 kHz from local weights; anything else is a built-in codec
    folder: an absolute path, a path relative to the working directory, or a name under codecs/."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpeechMTPError(f"codec spec must be a non-empty string such as 'default' or 'encodec:6'; got {spec!r}")
    spec = spec.strip()
    if spec == "encodec" or spec.startswith("encodec:"):
        from .encodec import EncodecCodec

        return EncodecCodec(bandwidth=_parse_encodec(spec), weights=encodec_weights, device=device)
    folder = _find_folder(spec)
    try:
        kind = json.loads((folder / "config.json").read_text()).get("kind", "builtin")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise SpeechMTPError(f"{folder / 'config.json'} is not a valid codec config ({e})") from e
    if kind != "builtin":
        raise SpeechMTPError(f"{folder / 'config.json'} has kind {kind!r}; this version only knows 'builtin'")
    from .builtin import BuiltinCodec

    return BuiltinCodec.load(folder, device)
