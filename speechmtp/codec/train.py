"""`speechmtp codec train`: train the built-in codec on a folder of audio or a JSONL manifest.

Losses: multi-resolution log-mel L1 + spectral convergence, plus the RVQ commitment loss. No GAN:
a discriminator would more than double the cost of a step, and the budget here is one CPU hour;
the phase is constrained only through the short STFT resolutions of the reconstruction loss.
The decoded audio is the input delayed by `latency_samples`, so targets are shifted to match.

Resume is exact: train_state.pt holds weights, optimizer, step and every RNG, and the data are
drawn from a seeded numpy generator, so stop-and-resume gives the weights of an uninterrupted run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils import SpeechMTPError, atomic_torch_save, atomic_write_text, read_audio
from .builtin import BuiltinCodec, BuiltinCodecConfig

STATE_FILE = "train_state.pt"


# ---------------------------------------------------------------------------------------------
# data


def list_audio(data: Path) -> list[Path]:
    """A folder (recursive *.wav/*.flac) or a JSONL manifest ({"audio": path relative to its folder})."""
    if data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".wav", ".flac") and p.is_file())
    elif data.is_file():
        files = []
        for i, line in enumerate(data.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                files.append((data.parent / item["audio"]).resolve())
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SpeechMTPError(f"{data} line {i} is not a JSON object with an \"audio\" path ({e})") from e
    else:
        raise SpeechMTPError(f"--data {data} does not exist; give a folder of .wav/.flac files or a JSONL manifest")
    if not files:
        raise SpeechMTPError(f"no audio found in {data}; it needs .wav/.flac files (searched recursively) or manifest lines")
    return files


def load_clips(files: list[Path], sample_rate: int, cache: Path | None = None, quiet: bool = False):
    """Read + resample every file once -> (list of int16 arrays, n skipped). Cached as one .npz beside the checkpoint."""
    key = json.dumps([sample_rate] + [str(f) for f in files])
    if cache is not None and cache.is_file():
        try:
            z = np.load(cache, allow_pickle=False)
            if str(z["key"]) == key:
                audio, offsets = z["audio"], z["offsets"]
                return [audio[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)], int(z["skipped"])
        except (OSError, ValueError, KeyError):
            pass  # stale or broken cache: rebuild it
    from tqdm import tqdm

    clips, skipped = [], 0
    for f in tqdm(files, desc="loading audio", disable=quiet, leave=False):
        try:
            wav, _ = read_audio(f, sample_rate)
        except SpeechMTPError:
            skipped += 1
            continue
        if wav.size < sample_rate // 10 or not np.isfinite(wav).all():
            skipped += 1
            continue
        clips.append((np.clip(wav, -1, 1) * 32767).astype(np.int16))
    if not clips:
        raise SpeechMTPError(f"none of the {len(files)} audio files could be read (or all were shorter than 0.1 s)")
    if cache is not None:
        import io

        from ..utils import atomic_write_bytes

        offsets = np.cumsum([0] + [len(c) for c in clips])
        buf = io.BytesIO()
        np.savez(buf, audio=np.concatenate(clips), offsets=offsets, skipped=skipped, key=key)
        atomic_write_bytes(cache, buf.getvalue())
    return clips, skipped


def split_clips(clips: list[np.ndarray]):
    """Hold out the last ~2% of clips (1..32) for validation; one clip is both train and validation."""
    if len(clips) == 1:
        return clips, clips
    n_val = min(32, max(1, len(clips) // 50))
    return clips[:-n_val], clips[-n_val:]


def sample_batch(clips: list[np.ndarray], weights: np.ndarray, rng: np.random.Generator, batch: int, seg: int):
    """Random segments of `seg` samples (zero-padded when a clip is shorter) -> float (B, 1, seg)."""
    out = np.zeros((batch, 1, seg), dtype=np.float32)
    for b, i in enumerate(rng.choice(len(clips), size=batch, p=weights)):
        c = clips[i]
        start = int(rng.integers(0, max(1, len(c) - seg + 1)))
        piece = c[start:start + seg].astype(np.float32) / 32767.0
        out[b, 0, :len(piece)] = piece
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# losses and metrics


class MelSTFTLoss(torch.nn.Module):
    """Multi-resolution L1 log-mel + spectral convergence; also the validation mel distance."""

    def __init__(self, sample_rate: int, resolutions=((128, 32, 32), (256, 64, 48), (512, 128, 64), (1024, 256, 80))):
        super().__init__()
        import librosa

        self.res = resolutions
        for i, (n_fft, _, n_mels) in enumerate(resolutions):
            mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
            self.register_buffer(f"mel{i}", torch.from_numpy(mel).float(), persistent=False)
            self.register_buffer(f"win{i}", torch.hann_window(n_fft), persistent=False)

    def spec(self, x: torch.Tensor, i: int) -> torch.Tensor:
        n_fft, hop, _ = self.res[i]
        s = torch.stft(x, n_fft, hop, window=getattr(self, f"win{i}"), return_complex=True)  # (B, F, frames)
        return s.abs().clamp(min=1e-7)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """y: reconstruction, x: target, both (B, 1, N)."""
        y, x = y[:, 0], x[:, 0]
        mel_l1 = sc = 0.0
        for i in range(len(self.res)):
            sy, sx = self.spec(y, i), self.spec(x, i)
            mel = getattr(self, f"mel{i}")
            mel_l1 = mel_l1 + (torch.log(mel @ sy + 1e-5) - torch.log(mel @ sx + 1e-5)).abs().mean()
            sc = sc + torch.linalg.norm(sy - sx) / torch.linalg.norm(sx).clamp(min=1e-5)
        n = len(self.res)
        return (mel_l1 + sc) / n, {"mel": mel_l1.item() / n, "sc": sc.item() / n}


def si_snr(y: np.ndarray, x: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    s = (y @ x) / max(x @ x, 1e-9) * x
    return float(10 * np.log10(max(s @ s, 1e-12) / max((y - s) @ (y - s), 1e-12)))


@torch.no_grad()
def validate(codec: BuiltinCodec, clips: list[np.ndarray], loss_fn: MelSTFTLoss, max_seconds: float = 8.0) -> dict:
    """Encode + decode held-out clips through the real (eval-mode) codec; compare with the delayed input."""
    was_training = codec.training
    codec.eval()
    d = codec.latency_samples
    mels, sis, used = [], [], [set() for _ in range(codec.n_codebooks)]
    for c in clips:
        x = torch.from_numpy(c[: int(max_seconds * codec.sample_rate)].astype(np.float32) / 32767.0)
        codes = codec.encode(x)
        y = codec.decode(codes)[0, 0, d: len(x)].cpu()  # decoded sample s + d is input sample s
        x = x[: len(y)]
        for q in range(codec.n_codebooks):
            used[q].update(codes[0, q].tolist())
        if len(x) < 1024:
            continue
        mels.append(loss_fn(y[None, None], x[None, None])[1]["mel"])
        sis.append(si_snr(y.numpy(), x.numpy()))
    codec.train(was_training)
    return {"val_mel": float(np.mean(mels)) if mels else float("nan"),
            "val_si_snr": float(np.mean(sis)) if sis else float("nan"),
            "codes_used": [len(u) / codec.codebook_size for u in used]}


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(out: Path, codec: BuiltinCodec, opt, step: int, rng: np.random.Generator, info: dict) -> None:
    # train_state.pt carries the weights too, so a resume never pairs weights and optimizer from different steps
    state = {"step": step, "model": codec.state_dict(), "optimizer": opt.state_dict(),
             "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "info": info}
    atomic_torch_save(state, out / STATE_FILE)
    codec.save(out)
    atomic_write_text(out / "README.md", model_card(codec, step, info))


def model_card(codec: BuiltinCodec, step: int, info: dict) -> str:
    cfg = codec.cfg
    n_enc = sum(p.numel() for p in codec.encoder.parameters())
    n_dec = sum(p.numel() for p in codec.decoder.parameters())
    val = info.get("val") or {}
    lines = [
        "# Built-in codec", "",
        "Causal neural audio codec of speechmtp: log-mel encoder, residual VQ, GRU decoder ending in an iSTFT.",
        "Trained with `speechmtp codec train` (multi-resolution mel + spectral-convergence loss, no GAN).", "",
        f"- data: `{info.get('data')}` ({info.get('n_train')} training clips, {info.get('hours', 0):.2f} h; "
        f"{info.get('n_val')} held out; {info.get('skipped', 0)} unreadable files skipped)",
        *([f"- decoder fine-tuned from `{info['decoder_from']}` (encoder and codebooks frozen: same codes)"]
          if info.get("decoder_only") else []),
        f"- steps: {step} (batch {info.get('batch_size')} x {info.get('segment_seconds')} s, lr {info.get('lr')}), "
        f"{info.get('train_seconds', 0) / 60:.1f} min on {info.get('device')}",
        f"- sample rate {cfg.sample_rate} Hz, frame rate {codec.frame_rate:g} Hz (hop {cfg.hop_length})",
        f"- codebooks: {cfg.n_codebooks} x {cfg.codebook_size} -> {codec.bitrate / 1000:.2f} kbps",
        f"- algorithmic latency: {codec.latency_samples} samples ({1000 * codec.latency_samples / cfg.sample_rate:.0f} ms) "
        f"= n_fft {cfg.n_fft} - iSTFT hop {cfg.istft_hop}; decoded audio is the input delayed by this much",
        f"- parameters: encoder {n_enc / 1e6:.2f} M, decoder {n_dec / 1e6:.2f} M",
        f"- validation (held-out, eval-mode encode+decode): mel L1 {val.get('val_mel', float('nan')):.3f}, "
        f"SI-SNR {val.get('val_si_snr', float('nan')):.2f} dB, codebook use "
        f"{', '.join(f'{u:.0%}' for u in val.get('codes_used', []))}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# training


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_overrides(text: str | None) -> dict:
    if not text:
        return {}
    is_json = text.lstrip().startswith("{")
    if not is_json and not Path(text).is_file():
        raise SpeechMTPError(f"--config-json {text!r} is neither a JSON object nor an existing file")
    try:
        data = json.loads(text if is_json else Path(text).read_text())
    except json.JSONDecodeError as e:
        raise SpeechMTPError(f"--config-json is neither a JSON object nor a JSON file ({e})") from e
    names = {f.name for f in dataclasses.fields(BuiltinCodecConfig)}
    unknown = sorted(set(data) - names)
    if not isinstance(data, dict) or unknown:
        raise SpeechMTPError(f"--config-json has unknown keys {unknown}; valid keys: {sorted(names)}")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechmtp codec train", description="train the built-in codec")
    p.add_argument("--data", required=True, help="folder of .wav/.flac (recursive) or a JSONL manifest")
    p.add_argument("--out", required=True, help="output folder, e.g. codecs/NAME")
    p.add_argument("--steps", type=int, default=4000, help="total optimizer steps (counting resumed ones); sets the LR schedule")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop with a checkpoint at this step without changing the schedule (continue with --resume)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--segment-seconds", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--decoder-from", default=None, metavar="CODEC",
                   help="fine-tune only the decoder of this trained codec folder: encoder and codebooks stay frozen, "
                        "so its codes (and any speech LM trained on them) stay valid while the audio improves")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-json", default=None, help="JSON object (or file) of BuiltinCodecConfig overrides")
    p.add_argument("--cache-dir", default=None,
                   help="where the resampled-audio cache goes (default: OUT; keep it out of folders you ship)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _stop_on_signals() -> dict:
    """SIGTERM (and SIGINT, which a shell ignores in `nohup ... &` jobs) end training with a checkpoint.

    Returns the previous handlers, for `_restore_signals`."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: keep the defaults
            pass
    return old


def _restore_signals(old: dict) -> None:
    import signal

    for sig, handler in old.items():
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..utils import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1 or args.segment_seconds <= 0:
        raise SpeechMTPError("--steps, --batch-size and --segment-seconds must be positive")
    device = pick_device(args.device)
    out = Path(args.out)
    state = None
    if args.resume:
        if not (out / STATE_FILE).is_file():
            raise SpeechMTPError(f"--resume: no {STATE_FILE} in {out}; drop --resume to start a new run")
        try:
            state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise SpeechMTPError(f"{out / STATE_FILE} is unreadable ({e}); start a new run without --resume") from e
        from ..utils import load_config

        cfg = load_config(BuiltinCodecConfig, out / "config.json")
        if args.config_json:
            print("note: --config-json is ignored with --resume (the saved config.json wins)")
    elif args.decoder_from:
        base = BuiltinCodec.load(args.decoder_from, device="cpu")
        cfg = base.cfg
        if args.config_json:
            print("note: --config-json is ignored with --decoder-from (the base codec's config wins)")
    else:
        cfg = BuiltinCodecConfig(**{"sample_rate": args.sample_rate, **parse_overrides(args.config_json)})
    torch.manual_seed(args.seed)
    codec = BuiltinCodec(cfg, device=device)
    decoder_only = bool(args.decoder_from) or bool(state is not None and state["info"].get("decoder_only"))
    if args.decoder_from:
        codec.load_state_dict(base.state_dict())
    if decoder_only:  # the code path (encoder + codebooks) is frozen: no gradients, no EMA, no revival
        for m in (codec.encoder, codec.quantizer):
            m.requires_grad_(False)

    data = Path(args.data)
    files = list_audio(data)
    cache = Path(args.cache_dir) / f"{out.name}_audio_cache.npz" if args.cache_dir else out / "audio_cache.npz"
    clips, skipped = load_clips(files, cfg.sample_rate, cache=cache, quiet=args.quiet)
    train, val = split_clips(clips)
    lengths = np.array([len(c) for c in train], dtype=np.float64)
    weights = lengths / lengths.sum()
    seg = max(1, round(args.segment_seconds * cfg.sample_rate / cfg.hop_length)) * cfg.hop_length
    info = {"data": str(data), "n_train": len(train), "n_val": len(val), "skipped": skipped,
            "hours": float(lengths.sum()) / cfg.sample_rate / 3600, "batch_size": args.batch_size,
            "segment_seconds": seg / cfg.sample_rate, "lr": args.lr, "device": str(device), "train_seconds": 0.0,
            "decoder_only": decoder_only, "decoder_from": args.decoder_from}
    if skipped:
        print(f"skipped {skipped} unreadable, empty or too-short audio files")

    loss_fn = MelSTFTLoss(cfg.sample_rate).to(device)
    trained = list(codec.decoder.parameters()) if decoder_only else list(codec.parameters())
    opt = torch.optim.AdamW(trained, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    step = 0
    if state is not None:
        codec.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        info["train_seconds"] = state["info"].get("train_seconds", 0.0)
        info["val"] = state["info"].get("val")
        info["losses"] = state["info"].get("losses", [])
        info["decoder_from"] = state["info"].get("decoder_from")
    elif not decoder_only:
        # k-means the codebooks on encoder outputs of a few batches (encodec's own init would use one batch)
        with torch.no_grad():
            lat = [codec.encoder(sample_batch(train, weights, rng, args.batch_size, seg).to(device)) for _ in range(4)]
            lat = torch.cat([z.transpose(1, 2).reshape(-1, cfg.latent_dim) for z in lat])  # (N, D)
            codec.init_codebooks(lat, batches=4)
    info.setdefault("losses", [])
    end = min(args.steps, args.stop_at or args.steps)
    if step >= end:
        print(f"already at step {step}; nothing to do (raise --steps or --stop-at)")
        return 0

    from tqdm import tqdm

    old_handlers = _stop_on_signals()
    codec.train()
    d = cfg.latency_samples
    bar = tqdm(total=args.steps, initial=step, disable=args.quiet, dynamic_ncols=True)
    t_start = time.time()
    seconds0 = info["train_seconds"]
    try:
        while step < end:
            wav = sample_batch(train, weights, rng, args.batch_size, seg).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
            if decoder_only:
                codec.encoder.eval(), codec.quantizer.eval()
                codes = codec.encode(wav).clone()  # (B, Q, T), out of inference mode
                with torch.no_grad():
                    lat = codec.codes_to_latents(codes)
                recon, commit = codec.decoder(lat), torch.zeros((), device=device)
            else:
                recon, commit, _ = codec(wav)
            target = F.pad(wav, (d, 0))[..., : recon.shape[-1]]  # decoded sample s + d is input sample s
            rec_loss, parts = loss_fn(recon, target)
            loss = rec_loss + cfg.commit_weight * commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            step += 1
            info["losses"].append(round(loss.item(), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mel=f"{parts['mel']:.3f}", commit=f"{commit.item():.3f}")
            info["train_seconds"] = seconds0 + time.time() - t_start
            if args.val_every and step % args.val_every == 0:
                info["val"] = validate(codec, val, loss_fn)
                v = info["val"]
                bar.write(f"step {step}: val mel {v['val_mel']:.3f}  SI-SNR {v['val_si_snr']:.2f} dB  codes used "
                          f"{' '.join(f'{u:.0%}' for u in v['codes_used'])}  train loss {loss.item():.3f}")
            if step % args.save_every == 0 or step == end:
                save_checkpoint(out, codec, opt, step, rng, info)
    except KeyboardInterrupt:
        bar.close()
        save_checkpoint(out, codec, opt, step, rng, info)
        print(f"interrupted: checkpoint saved at step {step} in {out}; continue with --resume")
        return 130
    finally:
        _restore_signals(old_handlers)
    bar.close()
    if info.get("val") is None or (args.val_every and step % args.val_every):
        info["val"] = validate(codec, val, loss_fn)
        save_checkpoint(out, codec, opt, step, rng, info)
    v = info["val"]
    print(f"done: step {step}, val mel {v['val_mel']:.3f}, SI-SNR {v['val_si_snr']:.2f} dB -> {out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
