"""`speechmtp bench decode`: ntp vs mtp vs mtp-relaxed decoding speed on one model and the same texts.

Reports frames per second, forward passes per second of audio, mean steps accepted per forward,
per-depth acceptance and each mode's speedup over ntp, greedy and sampling. Greedy mtp must equal
greedy ntp token for token (`greedy_identical`); sampling mtp is lossless in distribution.

Without a trained voice (`--checkpoint`, default checkpoints/default) it falls back to a tiny model
trained for a few seconds on a synthetic repetitive code sequence, and says so in the output
(`model_source: "synthetic"`): its acceptance figures describe that toy, not speech.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ..generate import GenerationConfig, generate
from ..model import ModelConfig, SpeechLM
from ..text import encode
from ..utils import SpeechMTPError, atomic_write_text, pick_device

DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech synthesis should start talking before the sentence is finished.",
    "Multi token prediction drafts several frames, and one forward pass checks them all.",
]


def synthetic_codes(n: int, n_codebooks: int, codebook_size: int, length: int, seed: int = 0):
    """A learnable, repetitive corpus: each row repeats a short random motif (per codebook, shifted)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, n_codebooks, length, dtype=torch.long)
    lens = torch.randint(length // 2, length + 1, (n,), generator=g)
    for i in range(n):
        period = int(torch.randint(2, 5, (1,), generator=g))
        motif = torch.randint(0, codebook_size, (n_codebooks, period), generator=g)
        codes[i] = motif.repeat(1, length // period + 1)[:, :length]
    return codes, lens


def train_synthetic_model(cfg: ModelConfig, steps: int = 60, seed: int = 0, batch: int = 16,
                          length: int = 24, lr: float = 3e-3) -> SpeechLM:
    """A tiny model trained briefly on `synthetic_codes`, so heads agree with the main head often enough
    to exercise draft acceptance (tests and the no-checkpoint benchmark fallback)."""
    torch.manual_seed(seed)
    model = SpeechLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    text = torch.tensor([encode("a synthetic sentence.")] * batch)
    codes, lens = synthetic_codes(batch * 4, cfg.n_codebooks, cfg.codebook_size, length, seed)
    model.train()
    for it in range(steps):
        sel = slice((it % 4) * batch, (it % 4 + 1) * batch)
        b = {"text": text, "text_len": torch.full((batch,), text.shape[1]), "codes": codes[sel], "code_len": lens[sel]}
        loss, _ = model.compute_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


SYNTHETIC = ModelConfig(n_codebooks=4, codebook_size=64, d_model=64, n_layers=2, n_heads=2, max_seq_len=512,
                        mtp_heads=4)
REFERENCE_SIZE = ModelConfig(n_codebooks=8, codebook_size=1024, d_model=384, n_layers=8, n_heads=6, mtp_heads=4)


def _load(checkpoint: str | None, device: torch.device) -> tuple[SpeechLM, str]:
    if checkpoint == "synthetic":  # the toy whose heads agree: shows what trained heads buy
        return train_synthetic_model(SYNTHETIC, steps=80).to(device), "synthetic"
    if checkpoint:
        return SpeechLM.from_pretrained(checkpoint, device=device), checkpoint
    default = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
    if (default / "config.json").is_file():
        return SpeechLM.from_pretrained(default, device=device), str(default)
    print("bench decode: no --checkpoint and no checkpoints/default; using a tiny model trained on a "
          "synthetic sequence (model_source 'synthetic': its acceptance is not speech's)", file=sys.stderr)
    return train_synthetic_model(SYNTHETIC, steps=80).to(device), "synthetic"


def _frame_rate(model: SpeechLM, override: float | None) -> tuple[float, str]:
    """-> (frames per second of audio, where that number came from)."""
    if override:
        return float(override), "--frame-rate"
    try:
        from ..codec import load_codec

        return float(load_codec(model.cfg.codec).frame_rate), f"codec {model.cfg.codec}"
    except Exception as e:  # no codec on disk (a toy model): say so rather than guess silently
        print(f"bench decode: cannot load codec {model.cfg.codec!r} ({e}); assuming 75 frames/s", file=sys.stderr)
        return 75.0, "assumed (codec not loadable)"


def _run_mode(model, texts, cfg: GenerationConfig, device) -> tuple[list[torch.Tensor], dict]:
    outs, fw, steps, frames, wall = [], 0, 0, 0, 0.0
    tried, acc = None, None
    for t in texts:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        g = generate(model, encode(t), cfg)
        outs.append(g.codes())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall += time.perf_counter() - t0
        s = g.stats
        fw, steps, frames = fw + s.forward_passes, steps + s.steps, frames + s.frames
        tried = s.depth_tried if tried is None else [a + b for a, b in zip(tried, s.depth_tried)]
        acc = s.depth_accepted if acc is None else [a + b for a, b in zip(acc, s.depth_accepted)]
    return outs, {"frames": frames, "forward_passes": fw, "steps": steps, "wall_s": wall,
                  "frames_per_s": frames / max(wall, 1e-9), "accepted_per_step": steps / max(fw, 1),
                  "depth_acceptance": [a / t if t else 0.0 for a, t in zip(acc or [], tried or [])],
                  "ms_per_forward": 1000 * wall / max(fw, 1)}


def step_latency(model: SpeechLM, width: int = 1, iters: int = 50) -> float:
    """Seconds per batch-1 cached forward of `width` positions (the decode loop's model cost)."""
    dev = model.out.weight.device
    caches = model.make_caches(1)
    tok = torch.zeros(1, width, model.cfg.n_codebooks, dtype=torch.long, device=dev)
    at = min(100, model.cfg.max_seq_len // 2)  # a typical context length
    with torch.no_grad():
        for i in range(5 + iters):
            if i == 5:
                t0 = time.perf_counter()
            pos = (at + torch.arange(width, device=dev))[None]
            h = model.forward_step(tok, pos, caches, kv_len=at + width)
            model.logits(model.norm_f(h))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / iters


def run_decode_bench(checkpoint: str | None = None, texts: list[str] | None = None, device: str | None = None,
                     threads: int | None = None, max_frames: int = 300, frame_rate: float | None = None,
                     temperature: float = 0.8, top_k: int = 0, seed: int = 0, reference: bool = True) -> dict:
    """Every mode on the same model and texts -> the result dict (see the module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    model, source = _load(checkpoint, dev)
    texts = texts or DEFAULT_TEXTS
    fr, fr_source = _frame_rate(model, frame_rate)
    res: dict = {"model_source": source, "model_params": model.num_params(), "mtp_heads": model.cfg.mtp_heads,
                 "mtp_kind": model.cfg.mtp_kind, "frame_rate": fr, "frame_rate_source": fr_source, "texts": len(texts), "max_frames": max_frames,
                 "machine": {"platform": platform.platform(), "python": platform.python_version(),
                             "torch": torch.__version__, "device": str(dev), "threads": torch.get_num_threads(),
                             "cpu_count": os.cpu_count(),
                             "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}}
    for kind, temp in (("greedy", 0.0), ("sampling", temperature)):
        runs, codes = {}, {}
        for mode in ("ntp", "mtp", "mtp-relaxed"):
            cfg = GenerationConfig(mode=mode, temperature=temp, top_k=top_k, max_frames=max_frames, seed=seed)
            codes[mode], r = _run_mode(model, texts, cfg, dev)
            r["forward_passes_per_audio_s"] = r["forward_passes"] / max(r["frames"] / fr, 1e-9)
            runs[mode] = r
        for mode in ("mtp", "mtp-relaxed"):
            runs[mode]["speedup"] = runs[mode]["frames_per_s"] / max(runs["ntp"]["frames_per_s"], 1e-9)
        res[kind] = runs
        if kind == "greedy":
            res["greedy_identical"] = all(torch.equal(a, b) for a, b in zip(codes["ntp"], codes["mtp"]))
    g = res["greedy"]
    res["speedup_mtp"] = g["mtp"]["speedup"]
    res["speedup_mtp_relaxed"] = g["mtp-relaxed"]["speedup"]
    res["accepted_per_step"] = g["mtp"]["accepted_per_step"]
    res["step_latency_ms"] = {f"width{w}": 1000 * step_latency(model, w) for w in (1, 1 + model.cfg.mtp_heads)}
    if reference:  # the model cost of a default-voice-sized LM (random weights: latency does not depend on them)
        ref = SpeechLM(REFERENCE_SIZE).to(dev).eval()
        res["reference_step_latency_ms"] = {"config": "d_model 384, 8 layers, 8x1024 codebooks, 4 heads",
                                            **{f"width{w}": 1000 * step_latency(ref, w) for w in (1, 5)}}
    return res


def _table(res: dict) -> str:
    lines = [f"model: {res['model_source']} ({res['model_params'] / 1e6:.2f} M params, {res['mtp_heads']} "
             f"{res['mtp_kind']} heads), frame rate {res['frame_rate']} Hz, {res['machine']['device']}, "
             f"{res['machine']['threads']} threads",
             f"{'decode':<10}{'mode':<13}{'frames/s':>10}{'fwd/audio s':>13}{'acc/step':>10}{'speedup':>9}  depth acceptance"]
    for kind in ("greedy", "sampling"):
        for mode, r in res[kind].items():
            lines.append(f"{kind:<10}{mode:<13}{r['frames_per_s']:>10.1f}{r['forward_passes_per_audio_s']:>13.1f}"
                         f"{r['accepted_per_step']:>10.2f}{r.get('speedup', 1.0):>9.2f}  "
                         + " ".join(f"{a:.2f}" for a in r["depth_acceptance"]))
    lines.append(f"greedy mtp identical to ntp: {res['greedy_identical']}; batch-1 step latency (ms): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in res["step_latency_ms"].items()))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="speechmtp bench decode", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="SpeechLM folder, or 'synthetic' for a toy model trained on a synthetic sequence "
                    "(default: checkpoints/default, else the toy)")
    ap.add_argument("--texts", nargs="+", help="texts to synthesise (default: three built-in sentences)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--frame-rate", type=float, default=None, help="override the codec frame rate (Hz)")
    ap.add_argument("--temperature", type=float, default=0.8, help="for the sampling rows")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write JSON (to a file, or stdout with no value)")
    a = ap.parse_args(argv)
    if a.max_frames < 1:
        raise SpeechMTPError("--max-frames must be >= 1")
    res = run_decode_bench(a.checkpoint, a.texts, a.device, a.threads, a.max_frames, a.frame_rate, a.temperature)
    if a.json == "-":
        print(json.dumps(res, indent=2))
    else:
        print(_table(res))
        if a.json:
            atomic_write_text(a.json, json.dumps(res, indent=2) + "\n")
    return 0
