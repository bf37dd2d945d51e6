"""The built-in codec: a small causal neural codec designed to stream on a CPU.

    wav ─► causal log-mel frames (hop/S) ─► encoder (causal ConvNeXt, frame rate) ─► RVQ (encodec's, EMA)
    codes ─► summed codebook vectors ─► causal conv ─► GRU ─► MLP ─► log-magnitude + phase ─► iSTFT (OLA)

Everything after the codes runs at the frame rate (50 Hz by default) and is causal, so the
streaming decoder keeps a few frames of conv input, the GRU state and the iSTFT overlap tail, and
reproduces `decode` to float precision for any chunking. A GRU (a handful of ops per frame) instead
of a stack of ConvNeXt blocks is what makes one-frame streaming cheap: a 20 ms frame must decode in
under 0.2 ms to run 100x faster than real time, and on a 2-core CPU every small torch op costs ~5 µs,
which is why the stream decoder runs short chunks in numpy (~1 µs per op).

Latency: frame t's iSTFT window ends at the last sample the encoder saw, so the decoded audio is
the input delayed by `latency_samples` = n_fft - hop/S (320 samples = 20 ms at the defaults) and
every `push` returns exactly hop samples per frame; `flush` has nothing left to return.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import SpeechMTPError, load_config, load_safetensors, pick_device, save_config, save_safetensors
from .base import Codec, StreamDecoder


@dataclasses.dataclass
class BuiltinCodecConfig:
    kind: str = "builtin"
    sample_rate: int = 16000
    hop_length: int = 320  # samples per codec frame: 50 frames/s at 16 kHz
    subframes: int = 1  # iSTFT (and encoder STFT) frames per codec frame; 2 is smoother but costs streaming speed
    n_fft: int = 640  # iSTFT window; latency = n_fft - hop/S samples
    n_mels: int = 80  # encoder input
    enc_channels: int = 192
    enc_layers: int = 2  # ConvNeXt blocks (offline only, so the encoder may be wider than the decoder)
    enc_kernel: int = 7
    latent_dim: int = 64  # codebook vector size
    n_codebooks: int = 4
    codebook_size: int = 1024
    dec_channels: int = 160
    dec_kernel: int = 3  # causal conv over codebook vectors
    dec_gru_layers: int = 1
    dec_mlp_layers: int = 0
    log_mag_max: float = 8.0  # clamp before exp: keeps an untrained or drifting head finite
    # quantiser (encodec.quantization.ResidualVectorQuantizer)
    ema_decay: float = 0.99
    kmeans_iters: int = 20
    dead_code_threshold: float = 0.25  # EMA uses per batch; encodec's 2.0 assumes far bigger batches than a CPU takes
    commit_weight: float = 1.0

    def validate(self) -> None:
        if self.kind != "builtin":
            raise SpeechMTPError(f"config kind is {self.kind!r}, expected 'builtin'; this folder holds another codec")
        if self.sample_rate not in (16000, 24000):
            raise SpeechMTPError(f"sample_rate must be 16000 or 24000, got {self.sample_rate}")
        if self.hop_length <= 0 or self.hop_length % self.subframes:
            raise SpeechMTPError(f"hop_length ({self.hop_length}) must be a positive multiple of subframes ({self.subframes})")
        if self.sample_rate / self.hop_length > 50:
            raise SpeechMTPError(f"frame rate {self.sample_rate / self.hop_length:g} Hz exceeds 50 Hz; raise hop_length")
        if self.n_fft < self.hop_length // self.subframes or self.n_fft % 2:
            raise SpeechMTPError(f"n_fft ({self.n_fft}) must be even and at least hop_length/subframes")
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise SpeechMTPError("n_codebooks must be >= 1 and codebook_size >= 2")

    @property
    def istft_hop(self) -> int:
        return self.hop_length // self.subframes

    @property
    def latency_samples(self) -> int:
        return self.n_fft - self.istft_hop


def tiny_config(**overrides) -> BuiltinCodecConfig:
    """A config small enough for unit tests (seconds on a CPU)."""
    base = dict(hop_length=320, subframes=2, n_fft=320, n_mels=16, enc_channels=16, enc_layers=1, latent_dim=8,
                n_codebooks=2, codebook_size=16, dec_channels=16, kmeans_iters=2)
    base.update(overrides)
    return BuiltinCodecConfig(**base)


# ---------------------------------------------------------------------------------------------
# layers


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads only on the left, so output t sees inputs <= t."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.kernel_size[0] - 1) * self.dilation[0]
        return super().forward(F.pad(x, (pad, 0)))


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv + channel MLP with layer scale (encoder only)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 3 * dim)
        self.fc2 = nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        h = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        h = self.fc2(F.gelu(self.fc1(self.norm(h)))) * self.gamma
        return x + h.transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, cfg: BuiltinCodecConfig):
        super().__init__()
        import librosa

        self.cfg = cfg
        mel = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels)
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)  # (M, n_fft/2+1)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        c = cfg.enc_channels
        self.conv_in = CausalConv1d(cfg.n_mels * cfg.subframes, c, 3)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(c, cfg.enc_kernel) for _ in range(cfg.enc_layers)])
        self.norm = nn.LayerNorm(c)
        self.proj = nn.Linear(c, cfg.latent_dim)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T*hop) -> causal log-mel (B, S*M, T); STFT frame i covers samples ((i+1)*hop/S - n_fft, (i+1)*hop/S]."""
        cfg = self.cfg
        x = F.pad(wav[:, 0], (cfg.n_fft - cfg.istft_hop, 0))
        frames = x.unfold(-1, cfg.n_fft, cfg.istft_hop)  # (B, T*S, n_fft)
        power = torch.fft.rfft(frames * self.window).abs().pow(2)  # (B, T*S, F)
        logmel = (torch.log(power @ self.mel.T + 1e-5) + 5.0) / 4.0  # roughly zero-mean, unit-scale for speech
        b, n, m = logmel.shape
        return logmel.reshape(b, n // cfg.subframes, cfg.subframes * m).transpose(1, 2)  # (B, S*M, T)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(self.features(wav)))  # (B, C, T)
        return self.proj(self.norm(h.transpose(1, 2))).transpose(1, 2)  # (B, D, T)


class Decoder(nn.Module):
    """Codebook vectors (B, D, T) -> waveform (B, 1, T*hop), causal at frame rate."""

    def __init__(self, cfg: BuiltinCodecConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.dec_channels
        self.n_bins = cfg.n_fft // 2 + 1
        self.conv_in = CausalConv1d(cfg.latent_dim, c, cfg.dec_kernel)
        self.grus = nn.ModuleList([nn.GRU(c, c, batch_first=True) for _ in range(cfg.dec_gru_layers)])
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(c, 2 * c), nn.SiLU(), nn.Linear(2 * c, c))
                                   for _ in range(cfg.dec_mlp_layers)])
        self.head = nn.Linear(c, cfg.subframes * 2 * self.n_bins)
        with torch.no_grad():  # start quiet rather than at full-scale noise
            self.head.bias.view(cfg.subframes, 2, self.n_bins)[:, 0] = -4.0
            self.head.weight.mul_(0.1)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def body(self, h: torch.Tensor, states: list[torch.Tensor] | None = None):
        """h (B, T, C) after conv_in -> (B, T, C); GRU states in/out so streaming can carry them."""
        new_states = []
        for i, gru in enumerate(self.grus):
            if states is not None and h.shape[1] == 1:
                # one frame: the fused cell skips nn.GRU's per-call packing overhead (same math)
                hn = torch.gru_cell(h[:, 0], states[i], gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
                out = hn[:, None]
            else:
                out, hn = gru(h, None if states is None else states[i][None])
                hn = hn[0]
            h = h + out
            new_states.append(hn)
        for mlp in self.mlps:
            h = h + mlp(h)
        return h, new_states

    def frames(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> windowed iSTFT frames (B, T*S, n_fft)."""
        b, t, _ = h.shape
        x = self.head(h).view(b, t * self.cfg.subframes, 2, self.n_bins)
        spec = torch.polar(x[:, :, 0].clamp(max=self.cfg.log_mag_max).exp(), x[:, :, 1])
        return torch.fft.irfft(spec, n=self.cfg.n_fft, norm="ortho") * self.window

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        h, _ = self.body(F.silu(self.conv_in(z)).transpose(1, 2))  # (B, T, C)
        fr = self.frames(h)  # (B, T*S, n_fft)
        b, n, _ = fr.shape
        length = (n - 1) * cfg.istft_hop + cfg.n_fft
        # overlap-add; the tail past T*hop belongs to samples no frame has finished yet: dropped
        wav = F.fold(fr.transpose(1, 2), (1, length), (1, cfg.n_fft), stride=(1, cfg.istft_hop))  # (B, 1, 1, L)
        return wav[:, :, 0, : n * cfg.istft_hop]  # (B, 1, T*hop)


# ---------------------------------------------------------------------------------------------
# the codec


class BuiltinCodec(nn.Module, Codec):
    name = "builtin"

    def __init__(self, cfg: BuiltinCodecConfig | None = None, device: str | torch.device | None = None):
        super().__init__()
        from encodec.quantization import ResidualVectorQuantizer

        cfg = cfg or BuiltinCodecConfig()
        cfg.validate()
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / cfg.hop_length
        self.n_codebooks = cfg.n_codebooks
        self.codebook_size = cfg.codebook_size
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(
            dimension=cfg.latent_dim, n_q=cfg.n_codebooks, bins=cfg.codebook_size, decay=cfg.ema_decay,
            kmeans_init=True, kmeans_iters=cfg.kmeans_iters, threshold_ema_dead_code=0)  # see `_revive`
        # kmeans_init leaves zero codebooks until the first training batch; random ones make an untrained
        # codec decode something non-trivial (tests) while `inited` stays False so training still runs k-means.
        for layer in self.quantizer.vq.layers:
            layer._codebook.embed.normal_()
        self.decoder = Decoder(cfg)
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.to(self.device)
        self.eval()

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def latency_samples(self) -> int:
        """Decoded audio is the input delayed by this many samples (the iSTFT's look-back)."""
        return self.cfg.latency_samples

    @property
    def bitrate(self) -> float:
        return self.frame_rate * self.n_codebooks * math.log2(self.codebook_size)

    # -- model pieces the trainer uses ---------------------------------------------------------
    def pad_wav(self, wav: torch.Tensor) -> torch.Tensor:
        """Right-pad (B, 1, N) with zeros to a whole number of frames."""
        extra = (-wav.shape[-1]) % self.cfg.hop_length
        return F.pad(wav, (0, extra)) if extra else wav

    def codebook_table(self) -> torch.Tensor:
        """All codebooks stacked (Q*K, D): code q,k is row q*K + k."""
        return torch.cat([layer._codebook.embed for layer in self.quantizer.vq.layers[: self.n_codebooks]], 0)

    def code_modules(self) -> list[nn.Module]:
        """What the codes depend on (the token cache's key hashes these): not the decoder."""
        return [self.encoder, self.quantizer]

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, Q, T) -> summed codebook vectors (B, D, T); equals quantizer.decode (project_out is identity)."""
        offsets = torch.arange(self.n_codebooks, device=codes.device)[None, :, None] * self.codebook_size
        return F.embedding(codes + offsets, self.codebook_table()).sum(1).transpose(1, 2)

    def forward(self, wav: torch.Tensor):
        """Training pass: (B, 1, N) -> (reconstruction (B, 1, T*hop), commitment loss, codes (B, Q, T)).

        The RVQ loop of encodec's ResidualVectorQuantization.forward, plus dead-code revival per level.
        """
        z = self.encoder(self.pad_wav(wav))  # (B, D, T)
        residual, quantized, losses, codes = z, 0.0, [], []
        for layer in self.quantizer.vq.layers:
            q, idx, loss = layer(residual)
            if self.training:
                self._revive(layer._codebook, residual.detach())
            residual = residual - q
            quantized = quantized + q
            losses.append(loss)
            codes.append(idx)
        return self.decoder(quantized), torch.stack(losses).mean(), torch.stack(codes, 1)

    @torch.no_grad()
    def _revive(self, cb, residual: torch.Tensor) -> None:
        """Move codes whose EMA use fell below the threshold onto random vectors of this batch.

        encodec's own expiry only rewrites `embed`, which the EMA step then overwrites from `embed_avg`,
        so there dead codes stay dead; here `embed_avg` and `cluster_size` move with them.
        """
        dead = cb.cluster_size < self.cfg.dead_code_threshold
        n = int(dead.sum())
        if n == 0:
            return
        x = residual.transpose(1, 2).reshape(-1, residual.shape[1])  # (B*T, D)
        pick = x[torch.randint(0, len(x), (n,), device=x.device)]
        cb.embed[dead] = pick
        cb.embed_avg[dead] = pick
        cb.cluster_size[dead] = 1.0  # a grace period of ~140 steps at decay 0.99 before it can be revived again

    @torch.no_grad()
    def init_codebooks(self, latents: torch.Tensor, iters: int | None = None, batches: int = 1) -> None:
        """K-means each RVQ level on latents (N, D) and its residuals; memory-light (encodec's broadcasts N x K x D).

        `batches`: how many training batches the latents came from, so the EMA cluster sizes start at a
        per-batch scale and the dead-code threshold means the same from the first step on.
        """
        x = latents.detach().float()
        for layer in self.quantizer.vq.layers:
            cb = layer._codebook
            k = cb.codebook_size
            idx = torch.randperm(len(x))[:k] if len(x) >= k else torch.randint(0, len(x), (k,))
            means = x[idx].clone()
            for _ in range(iters or self.cfg.kmeans_iters):
                assign = torch.cdist(x, means).argmin(1)
                counts = torch.bincount(assign, minlength=k).float()
                sums = torch.zeros_like(means).index_add_(0, assign, x)
                means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], means)
            assign = torch.cdist(x, means).argmin(1)
            counts = torch.bincount(assign, minlength=k).float()
            size = counts / batches
            cb.embed.copy_(means)
            cb.embed_avg.copy_(means * size[:, None])
            cb.cluster_size.copy_(size)
            cb.inited.fill_(1.0)
            x = x - means[assign]

    # -- Codec interface -----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, wav, sample_rate: int | None = None) -> torch.Tensor:
        wav = self.pad_wav(self._prepare_wav(wav, sample_rate))
        z = self.encoder(wav)
        return self.quantizer.encode(z, self.frame_rate).transpose(0, 1).contiguous()  # (Q, B, T) -> (B, Q, T)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self._check_codes(codes)
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 1, 0, device=self.device)
        return self.decoder(self.codes_to_latents(codes))

    def stream_decoder(self) -> "BuiltinStreamDecoder":
        return BuiltinStreamDecoder(self)

    # -- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # weights first, config last: a folder with a config.json always has matching weights
        save_safetensors(self.state_dict(), folder / "model.safetensors", metadata={"format": "pt", "kind": "builtin"})
        save_config(self.cfg, folder / "config.json")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "BuiltinCodec":
        folder = Path(folder)
        if not folder.is_dir():
            raise SpeechMTPError(f"codec folder not found: {folder}; train one with `speechmtp codec train --out {folder}`")
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise SpeechMTPError(f"codec folder {folder} has no {name}; it is incomplete, re-train or re-copy it")
        try:
            cfg = load_config(BuiltinCodecConfig, folder / "config.json")
        except TypeError as e:
            raise SpeechMTPError(f"{folder / 'config.json'} is not a built-in codec config ({e})") from e
        codec = cls(cfg, device="cpu")
        state = load_safetensors(folder / "model.safetensors")
        try:
            codec.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SpeechMTPError(f"{folder / 'model.safetensors'} does not match {folder / 'config.json'} ({e}); "
                                 "re-copy both files from the same training run") from e
        dev = pick_device(device) if not isinstance(device, torch.device) else device
        codec.device = dev
        return codec.to(dev).eval()


# ---------------------------------------------------------------------------------------------
# streaming


class BuiltinStreamDecoder(StreamDecoder):
    """Exact frame-by-frame decoding: carries the last k-1 codes, GRU states and the iSTFT overlap tail.

    The decoder's first layer (codebook sum, then a causal conv with k taps) is linear in the codes, so
    it is folded into one table per (tap, codebook) and a frame costs one gather-and-sum over k*Q rows
    instead of a matrix-vector product. At one frame per push, op count, not arithmetic, is the cost:
    ~25 small torch ops at ~5-10 µs each on a 2-core CPU is more than the 200 µs a 20 ms frame may take
    at 100x real time. So on a CPU, pushes of up to `fast_max_frames` frames run the same math in numpy
    (`_push_numpy`, ~35 ops at ~1-3 µs); longer chunks, and any push on a GPU, take `_push_torch`, which
    stays the reference the tests hold the numpy path to.

    Both paths update the same state buffers in place (numpy views of the torch tensors on a CPU), so a
    stream may mix chunk sizes freely.
    """

    # numpy path up to this many frames per push (CPU only; 0 turns it off). With one thread numpy was
    # still ~1.5x faster than torch at 16 frames (the engine's chunks are 2, then 12); for long chunks
    # torch's fused nn.GRU and multithreaded matmuls are the safer choice.
    fast_max_frames = 16

    def __init__(self, codec: BuiltinCodec):
        self.codec = codec
        cfg = codec.cfg
        k, q, kk = cfg.dec_kernel, cfg.n_codebooks, cfg.codebook_size
        dec = codec.decoder
        with torch.no_grad():
            w = dec.conv_in.weight.detach()  # (C, D, k)
            rows = torch.einsum("nd,cdj->jnc", codec.codebook_table().detach(), w)  # (k, Q*K, C)
            rows = rows.reshape(k, q, kk, -1)
            rows[k - 1, 0] += dec.conv_in.bias.detach()  # the current frame's tap is always real: bias rides on it
            # an extra all-zero row per (tap, codebook) stands for "before the stream started" (the conv's zero pad)
            rows = F.pad(rows, (0, 0, 0, 1))  # (k, Q, K+1, C)
            self.table = rows.reshape(k * q * (kk + 1), -1).contiguous()
        self.pad_code = kk
        tap = torch.arange(k, device=codec.device)[None, :]  # (1, k)
        book = torch.arange(q, device=codec.device)[:, None]  # (Q, 1)
        self.offsets = ((tap * q + book) * (kk + 1))[None]  # (1, Q, k): row of code c at (tap, book) = offset + c
        # plain tensors, not module attributes: nn.Module.__getattr__ costs microseconds per frame.
        # The stream decoder snapshots the weights; make a new one after changing them.
        self.grus = [(g.weight_ih_l0.detach(), g.weight_hh_l0.detach(), g.bias_ih_l0.detach(), g.bias_hh_l0.detach())
                     for g in dec.grus]
        self.head_w, self.head_b = dec.head.weight.detach(), dec.head.bias.detach()
        self.mlps = list(dec.mlps)
        self.window = dec.window
        hop = cfg.hop_length
        self.win_now, self.win_later = dec.window[:hop].clone(), dec.window[hop:].clone()  # torch one-frame path
        self.np_weights = self._numpy_weights() if codec.device.type == "cpu" else None
        self.reset()

    def _numpy_weights(self) -> dict:
        """float32 numpy copies for `_push_numpy`, laid out so every matmul is (rows, in) @ (in, out)."""
        from scipy.special import expit  # scipy is already loaded: librosa (the encoder's mel filters) imports it

        def a(x: torch.Tensor) -> np.ndarray:  # a contiguous copy: a snapshot, like the table
            return np.array(x.detach().numpy(), dtype=np.float32, order="C")

        k = self.codec.cfg.dec_kernel
        return dict(
            expit=expit, table=self.table.numpy(), offsets=self.offsets[0].numpy(),  # (Q, k)
            # index arrays into the code buffer (B, Q, k-1+t) that broadcast to (t, Q, k): frame s, book q,
            # tap j reads column s + j (the conv's receptive field)
            books=np.arange(self.codec.cfg.n_codebooks)[:, None],
            taps=np.arange(max(self.fast_max_frames, 1))[:, None, None] + np.arange(k),
            grus=[(a(wih.T), a(whh.T), a(bih), a(bhh)) for wih, whh, bih, bhh in self.grus],
            mlps=[(a(m[0].weight.T), a(m[0].bias), a(m[2].weight.T), a(m[2].bias)) for m in self.mlps],
            head_w=a(self.head_w.T), head_b=a(self.head_b), window=a(self.window))

    def reset(self) -> None:
        self.batch: int | None = None
        self.codes = self.states = self.tail = None

    def _start(self, b: int) -> None:
        cfg, dev = self.codec.cfg, self.codec.device
        self.batch = b
        self.codes = torch.full((b, cfg.n_codebooks, cfg.dec_kernel - 1), self.pad_code, dtype=torch.long, device=dev)
        self.states = [torch.zeros(b, cfg.dec_channels, device=dev) for _ in range(cfg.dec_gru_layers)]
        self.tail = torch.zeros(b, 1, cfg.n_fft - cfg.istft_hop, device=dev)  # overlap not yet complete
        self.bags = torch.arange(b, device=dev) * cfg.n_codebooks * cfg.dec_kernel  # embedding_bag offsets, 1 frame
        if self.np_weights is not None:  # views of the same memory: both paths see every update
            self.np_state = (self.codes.numpy(), [s.numpy() for s in self.states], self.tail.numpy())

    def _check(self, codes: torch.Tensor) -> torch.Tensor:
        """The base class's checks with fewer tensor ops (this runs once per frame)."""
        cfg = self.codec.cfg
        if (not isinstance(codes, torch.Tensor) or codes.dtype != torch.long or codes.dim() != 3
                or codes.shape[1] != cfg.n_codebooks or codes.device != self.codec.device):
            return self.codec._check_codes(codes)
        if codes.numel():
            lo, hi = torch.aminmax(codes)
            if int(lo) < 0 or int(hi) >= cfg.codebook_size:
                return self.codec._check_codes(codes)  # raises with the full message
        return codes

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        if (self.np_weights is not None and isinstance(codes, torch.Tensor) and codes.dtype == torch.long
                and codes.is_cpu and codes.dim() == 3 and 0 < codes.shape[2] <= self.fast_max_frames
                and codes.shape[1] == self.codec.cfg.n_codebooks):
            a = codes.numpy()
            # one reduction checks both bounds: negative codes wrap to huge values as uint64
            if a.view(np.uint64).max() < self.codec.cfg.codebook_size:
                if self.batch is None:
                    self._start(a.shape[0])
                if a.shape[0] == self.batch:
                    return self._push_numpy(a)
        return self._push_torch(codes)  # also raises the errors for anything the fast path declined

    def _push_numpy(self, a: np.ndarray) -> torch.Tensor:
        """The torch path's math for a few frames (B, Q, t) in numpy, whose ops cost ~1 µs instead of ~5."""
        cfg, w = self.codec.cfg, self.np_weights
        expit = w["expit"]
        codes, states, tail = self.np_state
        b, _, t = a.shape
        buf = np.concatenate([codes, a], 2)  # (B, Q, k-1+t)
        codes[...] = buf[:, :, t:]
        if t == 1:
            idx = buf + w["offsets"]  # (B, Q, k): the frame's table rows
        else:
            if len(w["taps"]) < t:  # fast_max_frames was raised after this decoder was made
                w["taps"] = np.arange(t)[:, None, None] + np.arange(cfg.dec_kernel)
            idx = buf[:, w["books"], w["taps"][:t]] + w["offsets"]  # (B, t, Q, k): table rows of each frame
        x = w["table"][idx.reshape(b * t, -1)].sum(1)  # (B*t, C)
        x *= expit(x)  # silu
        c = x.shape[1]
        for (wih, whh, bih, bhh), h in zip(w["grus"], states):  # h (B, C): the stream's state, updated in place
            gi = (x @ wih + bih).reshape(b, t, 3 * c)  # every frame's input side at once: it does not wait on h
            out = np.empty((b, t, c), np.float32)
            for s in range(t):  # torch.gru_cell: r, z = σ(.), n = tanh(i_n + r * h_n), h' = (1 - z) n + z h
                gh = h @ whh + bhh  # (B, 3C)
                rz = expit(gi[:, s, :2 * c] + gh[:, :2 * c])
                n = np.tanh(gi[:, s, 2 * c:] + rz[:, :c] * gh[:, 2 * c:])
                h -= n
                h *= rz[:, c:]
                h += n
                out[:, s] = h
            x = x + out.reshape(b * t, c)
        for w1, b1, w2, b2 in w["mlps"]:
            y = x @ w1 + b1
            y *= expit(y)
            x = x + (y @ w2 + b2)
        y = (x @ w["head_w"] + w["head_b"]).reshape(b, t * cfg.subframes, 2, -1)
        mag, phase = np.minimum(y[:, :, 0], np.float32(cfg.log_mag_max)), y[:, :, 1]
        np.exp(mag, out=mag)
        spec = np.empty(mag.shape, np.complex64)  # (B, t*S, F): torch.polar(mag, phase)
        np.cos(phase, out=spec.real)
        np.sin(phase, out=spec.imag)
        spec *= mag
        fr = np.fft.irfft(spec, n=cfg.n_fft, norm="ortho")  # (B, t*S, n_fft), float32 from complex64
        hop, hs, n_fft, keep = cfg.hop_length, cfg.istft_hop, cfg.n_fft, tail.shape[-1]
        if t == 1 and cfg.subframes == 1 and n_fft == 2 * hop:  # the default layout: window fused into the OLA
            out = fr[..., :hop] * w["window"][:hop]
            out += tail
            np.multiply(fr[..., hop:], w["window"][hop:], out=tail)
            return torch.from_numpy(out)
        fr *= w["window"]
        full = np.zeros((b, 1, keep + t * hop), np.float32)
        full[..., :keep] = tail
        for i in range(t * cfg.subframes):  # overlap-add
            full[:, 0, i * hs: i * hs + n_fft] += fr[:, i]
        tail[...] = full[..., t * hop:]
        return torch.from_numpy(full[..., : t * hop])

    @torch.inference_mode()
    def _push_torch(self, codes: torch.Tensor) -> torch.Tensor:
        codec, cfg, dec = self.codec, self.codec.cfg, self.codec.decoder
        codes = self._check(codes)
        b, _, t = codes.shape
        if t == 0:
            return torch.zeros(b, 1, 0, device=codec.device)
        if self.batch is None:
            self._start(b)
        elif b != self.batch:
            raise SpeechMTPError(f"this stream was started with batch size {self.batch}, got {b}; "
                                 "use one stream decoder per batch shape, or reset() it")
        buf = torch.cat([self.codes, codes], 2)  # (B, Q, k-1+t)
        self.codes.copy_(buf[:, :, t:])
        hop, hs, n_fft = cfg.hop_length, cfg.istft_hop, cfg.n_fft
        if t == 1:  # a GPU's one-frame path (a CPU's is `_push_numpy`): fewest ops, so fewest kernel launches
            x = F.silu(F.embedding_bag((buf + self.offsets).view(-1), self.table, self.bags, mode="sum"))  # (B, C)
            for w, h in zip(self.grus, self.states):
                h.copy_(torch.gru_cell(x, h, *w))
                x = x + h
            for mlp in self.mlps:
                x = x + mlp(x)
            mag, phase = F.linear(x, self.head_w, self.head_b).view(b, cfg.subframes, 2, -1).unbind(2)
            spec = torch.polar(mag.clamp(max=cfg.log_mag_max).exp(), phase)  # (B, S, F)
            if cfg.subframes == 1 and n_fft == 2 * hop:
                # the default layout, with the window fused into the overlap-add
                raw = torch.fft.irfft(spec, n=n_fft, norm="ortho")  # (B, 1, n_fft), not yet windowed
                out = torch.addcmul(self.tail, raw[..., :hop], self.win_now)  # (B, 1, hop): complete now
                torch.mul(raw[..., hop:], self.win_later, out=self.tail)
                return out
            fr = torch.fft.irfft(spec, n=n_fft, norm="ortho") * self.window  # (B, S, n_fft)
            full = F.pad(self.tail, (0, hop))  # (B, 1, keep + hop)
            for i in range(cfg.subframes):
                full[:, 0, i * hs: i * hs + n_fft] += fr[:, i]
        else:
            idx = (buf.unfold(2, cfg.dec_kernel, 1) + self.offsets[:, :, None]).transpose(1, 2)  # (B, t, Q, k)
            x = F.silu(F.embedding_bag(idx.reshape(b * t, -1), self.table, mode="sum")).view(b, t, -1)
            h, states = dec.body(x, self.states)  # (B, t, C)
            for old, new in zip(self.states, states):
                old.copy_(new)
            fr = dec.frames(h)  # (B, t*S, n_fft)
            n = t * cfg.subframes
            length = (n - 1) * hs + n_fft
            full = F.pad(self.tail, (0, t * hop))  # (B, 1, keep + t*hop)
            full += F.fold(fr.transpose(1, 2), (1, length), (1, n_fft), stride=(1, hs))[:, 0]
        self.tail.copy_(full[..., t * hop:])
        return full[..., : t * hop]

    def flush(self) -> torch.Tensor:
        # decode() drops the unfinished overlap too, so nothing is held back
        out = torch.zeros(self.batch or 1, 1, 0, device=self.codec.device)
        self.reset()
        return out
