"""`speechmtp bench codec`: codec speed (offline and streaming) and streaming exactness.

RTF = compute time / audio duration (below 1 is faster than real time); x_realtime = 1 / RTF.
Streaming decodes the offline codes 1 and 4 frames per push, times every push (the per-chunk
latency a listener waits for), and compares the concatenated output with the offline decode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from ..utils import SpeechMTPError, atomic_write_text, pick_device, read_audio

BUILTIN_RANDOM = "builtin:random"  # bench-only spec: the built-in codec, untrained, default config


def speech_like(seconds: float, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal with moving pitch, two moving formants, syllable-rate loudness
    and noise bursts: enough like speech that a codec's cost is representative, no file needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    f1 = 600 + 200 * np.sin(2 * np.pi * 3.1 * t)
    f2 = 1600 + 400 * np.sin(2 * np.pi * 1.9 * t + 1.0)
    voiced = np.zeros_like(t)
    for k in range(1, 40):
        fk = k * f0
        gain = np.exp(-(((fk - f1) / 150) ** 2)) + 0.5 * np.exp(-(((fk - f2) / 250) ** 2)) + 0.02
        voiced += gain * np.sin(k * phase)
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.5  # ~4 syllables/s with short pauses
    noise = rng.standard_normal(len(t)) * (env < 0.2) * 0.05  # fricative-like bursts between syllables
    wav = voiced * env + noise
    return (0.5 * wav / np.abs(wav).max()).astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _stream(codec, codes: torch.Tensor, chunk: int):
    """-> (audio (B, 1, N), per-push seconds, frames pushed before the first audio)."""
    dec = codec.stream_decoder()
    parts, times, first = [], [], None
    for i in range(0, codes.shape[-1], chunk):
        y, dt = _timed(lambda: dec.push(codes[..., i:i + chunk]), codec.device)
        parts.append(y)
        times.append(dt)
        if first is None and y.shape[-1] > 0:
            first = min(i + chunk, codes.shape[-1])
    y, dt = _timed(dec.flush, codec.device)
    parts.append(y)
    times[-1] += dt  # the last push and the flush are one chunk's worth of waiting
    return torch.cat(parts, dim=-1), times, first


def bench_one(codec, wav: np.ndarray, sample_rate: int, chunks=(1, 4), random_codes: bool = False) -> dict:
    """`random_codes`: decode uniformly random codes of the encoded shape instead of the encoder's. Why: an
    untrained encoder maps everything to a few codes, and a near-constant signal would make the
    streaming-exactness check meaningless; decoding costs the same for any code values."""
    seconds = len(wav) / sample_rate
    dev = codec.device
    with torch.inference_mode():
        # warm-up on a short piece: first calls pay for allocation and kernel selection
        short = wav[: int(sample_rate * min(seconds, 0.5))]
        warm = codec.encode(short, sample_rate=sample_rate)
        codec.decode(warm)
        _stream(codec, warm, 1)

        codes, t_enc = _timed(lambda: codec.encode(wav, sample_rate=sample_rate), dev)
        if random_codes:
            g = torch.Generator().manual_seed(0)
            codes = torch.randint(0, codec.codebook_size, tuple(codes.shape), generator=g).to(codes.device)
        ref, t_dec = _timed(lambda: codec.decode(codes), dev)
        res = {"codec": codec.name, "audio_seconds": round(seconds, 3),
               "decoded_codes": "random" if random_codes else "encoded",
               "encode_rtf": t_enc / seconds, "decode_rtf": t_dec / seconds,
               "encode_x_realtime": seconds / t_enc, "decode_x_realtime": seconds / t_dec}
        diffs = []
        for chunk in chunks:
            y, times, first = _stream(codec, codes, chunk)
            diffs.append((y - ref).abs().max().item() if y.shape == ref.shape else float("inf"))
            ms = np.array(times) * 1000
            key = "stream" if chunk == 1 else f"stream_chunk{chunk}"
            lat = "chunk" if chunk == 1 else f"chunk{chunk}"
            res[f"{key}_rtf"] = float(ms.sum() / 1000 / seconds)
            res[f"{key}_x_realtime"] = float(seconds / (ms.sum() / 1000))
            res[f"{lat}_latency_ms_p50"] = float(np.percentile(ms, 50))
            res[f"{lat}_latency_ms_p95"] = float(np.percentile(ms, 95))
            res[f"{key}_first_audio_after_frames"] = first
    # the task's field names for chunk 1; chunk 4's RTF is "stream_rtf_chunk4"
    if "stream_chunk4_rtf" in res:
        res["stream_rtf_chunk4"] = res.pop("stream_chunk4_rtf")
    res.update(stream_max_abs_diff=max(diffs), offline_peak=ref.abs().max().item(),
               sample_rate=codec.sample_rate, frame_rate=codec.frame_rate,
               n_codebooks=codec.n_codebooks, codebook_size=codec.codebook_size)
    return res


def _load(spec: str, device, encodec_weights):
    """-> (codec, weights label). EnCodec without a local weights file falls back to random weights
    (its speed and exactness do not depend on them), and says so."""
    from ..codec import load_codec

    if spec == "encodec" or spec.startswith("encodec:"):
        from ..codec import _parse_encodec
        from ..codec.encodec import EncodecCodec, EncodecWeightsNotFound

        bw = _parse_encodec(spec)
        try:
            return EncodecCodec(bw, weights=encodec_weights, device=device), "pretrained"
        except EncodecWeightsNotFound:
            print(f"note: no EnCodec weights file; benchmarking {spec} with random weights", file=sys.stderr)
            torch.manual_seed(0)
            return EncodecCodec(bw, device=device, pretrained=False), "random"
    if spec == BUILTIN_RANDOM:
        from ..codec.builtin import BuiltinCodec

        torch.manual_seed(0)
        return BuiltinCodec(device=device), "random"
    return load_codec(spec, device=device), "trained"


def default_specs() -> list[str]:
    from ..codec import codecs_dir

    specs = ["encodec"]
    if (codecs_dir() / "default" / "config.json").is_file():
        specs.append("default")
    else:
        try:
            import speechmtp.codec.builtin  # noqa: F401

            specs.append(BUILTIN_RANDOM)
        except ImportError:
            pass
    return specs


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_codec_bench(codecs: list[str] | None = None, seconds: float = 10.0, audio: str | None = None,
                    device: str | None = None, threads: int | None = None,
                    encodec_weights: str | None = None, chunks=(1, 4)) -> dict:
    """Benchmark each codec spec on the same audio -> {"machine": {...}, "results": [{...}, ...]}."""
    if seconds <= 0:
        raise SpeechMTPError(f"--seconds must be positive, got {seconds}")
    if threads is not None and threads < 1:
        raise SpeechMTPError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        return _run(codecs, seconds, audio, pick_device(device), encodec_weights, chunks)
    finally:
        torch.set_num_threads(before)  # a caller (bench all, tests) keeps its own setting


def _run(codecs, seconds, audio, dev, encodec_weights, chunks) -> dict:
    if audio:
        wav, sr = read_audio(audio)
        wav = wav[: int(seconds * sr)]
        source = audio
    else:
        sr, source = 24000, "synthetic speech-like signal"
        wav = speech_like(seconds, sr)
    results = []
    for spec in codecs or default_specs():
        codec, weights = _load(spec, dev, encodec_weights)
        res = bench_one(codec, wav, sr, chunks, random_codes=weights == "random")
        res["spec"], res["weights"] = spec, weights
        results.append(res)
    return {"machine": machine_info(dev), "audio": source, "results": results}


def format_table(report: dict) -> str:
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, device {m['device']}",
             f"audio: {report['audio']}", ""]
    head = (f"{'codec':<16}{'weights':<11}{'enc RTF':>9}{'dec RTF':>9}{'dec xRT':>9}{'str1 RTF':>10}"
            f"{'str4 RTF':>10}{'p50 ms':>8}{'p95 ms':>8}{'p50x4 ms':>9}{'max diff':>10}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(f"{r['codec']:<16}{r['weights']:<11}{r['encode_rtf']:>9.3f}{r['decode_rtf']:>9.3f}"
                     f"{r['decode_x_realtime']:>9.1f}{r['stream_rtf']:>10.3f}{r.get('stream_rtf_chunk4', float('nan')):>10.3f}"
                     f"{r['chunk_latency_ms_p50']:>8.2f}{r['chunk_latency_ms_p95']:>8.2f}"
                     f"{r.get('chunk4_latency_ms_p50', float('nan')):>9.2f}{r['stream_max_abs_diff']:>10.1e}")
    lines.append("")
    lines.append("RTF = compute time / audio time; str1/str4 = streaming decode, 1 or 4 frames per push; "
                 "p50/p95 = per-push latency; max diff = |streamed - offline|.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="speechmtp bench codec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", action="append", default=None, metavar="SPEC",
                   help="codec to measure (repeatable): 'encodec', 'encodec:BW', a built-in codec folder or name, "
                        f"or '{BUILTIN_RANDOM}'. Default: encodec plus codecs/default (or {BUILTIN_RANDOM})")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length to code (default 10)")
    p.add_argument("--audio", default=None, help="audio file to use instead of the synthetic signal")
    p.add_argument("--encodec-weights", default=None, help="local EnCodec weights file or folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    args = p.parse_args(argv)
    report = run_codec_bench(args.codec, seconds=args.seconds, audio=args.audio, device=args.device,
                             threads=args.threads, encodec_weights=args.encodec_weights)
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else format_table(report))
    return 0
