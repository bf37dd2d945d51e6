"""EnCodec 24 kHz (the `encodec` package) behind the Codec interface, with an exact streaming decoder.

Weights come only from a local file (see `find_weights`); nothing is downloaded. The streaming
decoder walks the package's own decoder module tree and wraps each module in its streaming twin from
`speechmtp.streaming`, sharing the weights, so it cannot drift from the offline network.

Start-up delay: EnCodec's first decoder convolution (kernel 7, over frames) pads its left edge by
reflection, so offline output sample 0 already depends on frames 0..6. An exact stream therefore
emits nothing until 7 frames have arrived (or the stream is flushed); after that every push of t
frames returns t*320 samples, and flush returns nothing more.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import streaming as S
from ..utils import SpeechMTPError, pick_device
from .base import Codec, StreamDecoder

WEIGHTS_FILE = "encodec_24khz-d7cc33bc.th"
WEIGHTS_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{WEIGHTS_FILE}"
WEIGHTS_ENV = "SPEECHMTP_ENCODEC_WEIGHTS"
BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps -> 2, 4, 8, 16, 32 codebooks


class EncodecWeightsNotFound(SpeechMTPError):
    """No local weights file; callers that can live with random weights (benchmarks) catch this."""


def _hub_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """The local weights file: `weights` (the file or a folder holding it), else $SPEECHMTP_ENCODEC_WEIGHTS,
    else the torch hub cache. An explicit choice is never silently replaced by a later place."""
    hub = _hub_weights_path()
    if weights is not None:
        given, source = Path(weights).expanduser(), "weights= / --encodec-weights"
    elif os.environ.get(WEIGHTS_ENV):
        given, source = Path(os.environ[WEIGHTS_ENV]).expanduser(), f"${WEIGHTS_ENV}"
    else:
        given, source = None, None
    if given is not None:
        path = given / WEIGHTS_FILE if given.is_dir() else given
        if path.is_file():
            return path
        looked = [f"{path} (from {source})"]
    elif hub.is_file():
        return hub
    else:
        looked = [f"weights= / --encodec-weights: not given", f"${WEIGHTS_ENV}: not set", f"{hub} (torch hub cache)"]
    raise EncodecWeightsNotFound(
        f"EnCodec weights file {WEIGHTS_FILE} not found. Looked in: " + "; ".join(looked) + ". "
        f"Download it yourself from the official EnCodec release ({WEIGHTS_URL}) and put it at {hub}, "
        f"or pass its path (file or folder) with --encodec-weights / weights=, or set ${WEIGHTS_ENV}. "
        "speechmtp never downloads weights itself.")


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError) for bad files
        raise SpeechMTPError(
            f"EnCodec weights file {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e}); "
            f"re-download {WEIGHTS_URL}") from e
    if not isinstance(state, dict):
        raise SpeechMTPError(f"EnCodec weights file {path} holds a {type(state).__name__}, not a state dict; "
                             f"re-download {WEIGHTS_URL}")
    return state


def _fold_weight_norm(model: nn.Module) -> None:
    """Replace weight norm by its plain weight: inference never trains, and the hook would recompute
    every weight on every call, which dominates small streaming chunks."""
    from torch.nn.utils import remove_weight_norm
    from torch.nn.utils.weight_norm import WeightNorm

    for module in model.modules():
        if any(isinstance(h, WeightNorm) for h in module._forward_pre_hooks.values()):
            remove_weight_norm(module)


def streaming_twin(module: nn.Module) -> S.StreamingLayer:
    """The streaming wrapper of an encodec decoder module (recursively), sharing its parameters."""
    from encodec.modules import SConv1d, SConvTranspose1d, SLSTM
    from encodec.modules.seanet import SEANetResnetBlock

    if isinstance(module, nn.Sequential):
        return S.Sequential([streaming_twin(m) for m in module])
    if isinstance(module, SConv1d):
        if not module.causal or not isinstance(module.conv.norm, nn.Identity):
            raise NotImplementedError("only causal SConv1d without a time norm can stream")
        # stride 1 (all decoder convs): encodec's extra right padding, get_extra_padding_for_conv1d, is 0
        return S.CausalConv1d(module.conv.conv, pad_mode=module.pad_mode)
    if isinstance(module, SConvTranspose1d):
        if not module.causal or module.trim_right_ratio != 1.0 or not isinstance(module.convtr.norm, nn.Identity):
            raise NotImplementedError("only causal SConvTranspose1d trimmed on the right can stream")
        return S.CausalConvTranspose1d(module.convtr.convtr)
    if isinstance(module, SLSTM):
        return S.LSTM(module.lstm, skip=module.skip)
    if isinstance(module, SEANetResnetBlock):
        return S.Residual(streaming_twin(module.shortcut), streaming_twin(module.block))
    if isinstance(module, (nn.ELU, nn.Tanh, nn.Identity)):
        return S.Pointwise(module)
    raise NotImplementedError(f"no streaming version of {type(module).__name__}")


class EncodecCodec(Codec):
    sample_rate = 24000
    frame_rate = 75.0
    codebook_size = 1024

    def __init__(self, bandwidth: float = 6.0, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, pretrained: bool = True):
        from encodec import EncodecModel

        given = bandwidth
        try:
            bandwidth = float(bandwidth)
        except (TypeError, ValueError):
            bandwidth = float("nan")  # reported by the check below
        if bandwidth not in BANDWIDTHS:
            raise SpeechMTPError(f"EnCodec 24 kHz bandwidth must be one of {', '.join(f'{b:g}' for b in BANDWIDTHS)} "
                                 f"kbps; got {given!r} (e.g. --codec encodec:6)")
        self.bandwidth = bandwidth
        self.n_codebooks = int(round(bandwidth / 0.75))  # 10 bits x 75 frames/s = 0.75 kbps per codebook
        self.name = f"encodec:{bandwidth:g}"
        self.device = pick_device(None if device is None else str(device))
        self.pretrained = pretrained
        state = _load_state(find_weights(weights)) if pretrained else None  # fail before building anything
        with warnings.catch_warnings():  # encodec uses the deprecated hook-style weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            model = EncodecModel.encodec_model_24khz(pretrained=False)
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise SpeechMTPError(f"the EnCodec weights file does not match the 24 kHz model ({e}); "
                                     f"use {WEIGHTS_FILE} from {WEIGHTS_URL}") from e
        else:
            # kmeans-initialised codebooks start as zeros, which would decode every code alike
            for layer in model.quantizer.vq.layers:
                layer._codebook.embed.normal_()
                layer._codebook.inited.fill_(1.0)
        _fold_weight_norm(model)
        model.set_target_bandwidth(bandwidth)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor | np.ndarray, sample_rate: int | None = None) -> torch.Tensor:
        wav = self._prepare_wav(wav, sample_rate)  # (B, 1, N)
        emb = self.model.encoder(wav)  # (B, 128, T), T = ceil(N / 320)
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.bandwidth)  # (Q, B, T)
        return codes.transpose(0, 1).long().contiguous()

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.quantizer.decode(codes.transpose(0, 1))  # (Q, B, T) -> (B, 128, T)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self._check_codes(codes)
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=self.device)
        return self.model.decoder(self._embed(codes)).float()  # (B, 1, T*320)

    def stream_decoder(self) -> "EncodecStreamDecoder":
        return EncodecStreamDecoder(self)


class EncodecStreamDecoder(StreamDecoder):
    """push(codes (B, Q, t)) -> audio (B, 1, n): n == t*320 once the first 7 frames are in (see module doc)."""

    start_delay_frames = 6  # frames the first output waits for (reflect padding of the kernel-7 conv)

    def __init__(self, codec: EncodecCodec):
        self.codec = codec
        self.net = streaming_twin(codec.model.decoder.model)
        self.reset()

    def reset(self) -> None:
        self.net.reset()
        self.batch: int | None = None

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self.codec._check_codes(codes)
        if self.batch is not None and codes.shape[0] != self.batch:
            raise SpeechMTPError(f"batch size changed mid-stream ({self.batch} -> {codes.shape[0]}); "
                                 "use one stream decoder per batch, or reset() first")
        self.batch = codes.shape[0]
        if codes.shape[-1] == 0:
            return torch.zeros(self.batch, 1, 0, device=self.codec.device)
        return self.net.step(self.codec._embed(codes)).float()

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """The rest of the stream (empty once 7 frames were pushed); the decoder is then reset, ready
        for a new stream, as the built-in codec's is."""
        if self.batch is None:
            return torch.zeros(1, 1, 0, device=self.codec.device)
        empty = torch.zeros(self.batch, self.codec.model.decoder.dimension, 0, device=self.codec.device)
        out = self.net.step(empty, final=True).float()
        self.reset()
        return out
