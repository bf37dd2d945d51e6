"""Voice speed against the teacher, side by side in one run: real-time factor and time to first audio.

Both voices get the same CPU threads and the same sentences, interleaved (teacher, ours, teacher,
ours, ...) so machine noise hits both alike. The teacher (Piper) streams per sentence, so its time
to first audio is the time to synthesise the first sentence; ours is the first streamed chunk.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..utils import SpeechMTPError, atomic_write_text
from .codec import machine_info

TEN_WORDS = "The quick brown fox jumps over the lazy dog near home."
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "heldout.txt"


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _time_teacher(teacher, text: str) -> tuple[float, float, float]:
    """(time to first sentence's audio, total time, audio seconds) for Piper streaming per sentence."""
    t0 = time.perf_counter()
    ttfa, samples = None, 0
    for chunk in teacher.voice.synthesize(text, syn_config=teacher.syn_config):
        if ttfa is None:
            ttfa = time.perf_counter() - t0
        samples += chunk.audio_float_array.size
    return ttfa or 0.0, time.perf_counter() - t0, samples / teacher.sample_rate


def _time_ours(engine, text: str, opts) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    ttfa, samples = None, 0
    for chunk in engine.stream(text, opts):
        if ttfa is None:
            ttfa = time.perf_counter() - t0
        samples += chunk.size
    return ttfa or 0.0, time.perf_counter() - t0, samples / engine.sample_rate


def run_voice_bench(checkpoint: str = "default", n: int = 10, modes=("ntp", "mtp", "mtp-relaxed"),
                    threads: int | None = None, device: str | None = None, seed: int = 0,
                    ttfa_repeats: int = 5, teacher: bool = True) -> dict:
    from ..engine import Engine

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    texts = [t for t in CORPUS.read_text().splitlines() if t.strip()][:n]
    engine = Engine.load(checkpoint, device=device)
    piper = None
    if teacher:
        from ..synth import Teacher

        piper = Teacher(threads=threads)
    res: dict = {"checkpoint": str(checkpoint), "sentences": len(texts), "machine": machine_info(engine.device),
                 "device": str(engine.device), "modes": {}, "ttfa_sentence": TEN_WORDS}
    # warm-up: first calls pay for allocation and thread-pool start
    _time_ours(engine, "Warm up.", engine.options(mode="mtp", seed=seed))
    if piper:
        _time_teacher(piper, "Warm up.")
    acc = {m: {"compute": 0.0, "audio": 0.0, "ttfa": []} for m in modes}
    tacc = {"compute": 0.0, "audio": 0.0, "ttfa": []}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    for text in tqdm(texts, desc="voice bench", unit="sentence"):
        if piper:
            _, wall, audio = _time_teacher(piper, text)
            tacc["compute"] += wall
            tacc["audio"] += audio
        for m in modes:
            _, wall, audio = _time_ours(engine, text, engine.options(mode=m, seed=seed))
            acc[m]["compute"] += wall
            acc[m]["audio"] += audio
    for _ in range(ttfa_repeats):
        if piper:
            tacc["ttfa"].append(_time_teacher(piper, TEN_WORDS)[0] * 1e3)
        for m in modes:
            acc[m]["ttfa"].append(_time_ours(engine, TEN_WORDS, engine.options(mode=m, seed=seed))[0] * 1e3)
    if piper:
        res["teacher"] = {"rtf": tacc["compute"] / max(tacc["audio"], 1e-9), "audio_s": tacc["audio"],
                          "ttfa_ms_p50": _pct(tacc["ttfa"], 50)}
    for m in modes:
        r = {"rtf": acc[m]["compute"] / max(acc[m]["audio"], 1e-9), "audio_s": acc[m]["audio"],
             "ttfa_ms_p50": _pct(acc[m]["ttfa"], 50), "ttfa_ms_p95": _pct(acc[m]["ttfa"], 95)}
        if piper:
            r["rtf_vs_teacher"] = r["rtf"] / max(res["teacher"]["rtf"], 1e-9)
        res["modes"][m] = r
    return res


def table(res: dict) -> str:
    lines = [f"{res['sentences']} held-out sentences, {res['machine']['threads']} threads on {res['machine']['cpu']}",
             f"{'voice':<22}{'RTF':>8}{'vs teacher':>12}{'TTFA p50 (ms)':>15}"]
    if "teacher" in res:
        t = res["teacher"]
        lines.append(f"{'teacher (Piper joe)':<22}{t['rtf']:>8.3f}{1.0:>12.2f}{t['ttfa_ms_p50']:>15.0f}")
    for m, r in res["modes"].items():
        lines.append(f"{'speechmtp ' + m:<22}{r['rtf']:>8.3f}{r.get('rtf_vs_teacher', float('nan')):>12.2f}"
                     f"{r['ttfa_ms_p50']:>15.0f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="speechmtp bench voice", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--n", type=int, default=10, help="held-out sentences to time")
    ap.add_argument("--modes", default="ntp,mtp,mtp-relaxed")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both voices (default: all)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-teacher", action="store_true", help="skip Piper (not installed)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.n < 1:
        raise SpeechMTPError("--n must be at least 1")
    res = run_voice_bench(a.checkpoint, a.n, tuple(m for m in a.modes.split(",") if m), a.threads, a.device,
                          teacher=not a.no_teacher)
    text = json.dumps(res, indent=2)
    if a.out:
        atomic_write_text(a.out, text + "\n")
    print(text if a.json else table(res))
    return 0
