"""`speechmtp recipe default-voice`: the whole default-voice recipe, one command, resumable.

    1. corpus   speechmtp data synth   (Piper en_US-joe-medium reads speechmtp/corpus/*.txt)
    2. codec    speechmtp codec train  (-> codecs/NAME)
    3. LM       speechmtp train        (speech LM + MTP heads on the codec's tokens -> checkpoints/NAME)
    4. heads    speechmtp train --heads-only --distill  (optional: self-distilled MTP heads)
    5. report   speechmtp eval + speechmtp bench voice   (WER vs the teacher, RTF, time to first audio)

Every stage resumes (the corpus is appended, trainers take --resume), so rerunning after an
interruption continues where it stopped. `--scale gpu` trains bigger and longer; the CPU defaults
fit a 2-core machine in a few hours. Each stage's exact command is printed before it runs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .utils import SpeechMTPError

REPO = Path(__file__).resolve().parents[1]

# One architecture at both scales: d256, 4 layers, 3 cascaded MTP heads (7.6 M parameters), the size that
# decodes faster than real time on one CPU core. The shipped voice's LM is the GPU scale's (about 6,500
# steps of 64 utterances reached its lowest validation loss; --keep-best keeps that step). The CPU scale
# runs the same recipe with smaller batches, for hours.
SCALES = {
    "cpu": {"codec_steps": 6000, "codec_batch": 16, "lm_steps": 6000, "lm_batch": 16, "lr": "2e-3", "heads_steps": 500},
    "gpu": {"codec_steps": 40000, "codec_batch": 32, "lm_steps": 6500, "lm_batch": 64, "lr": "2e-3", "heads_steps": 700},
}
ARCH = ["--d-model", "256", "--n-layers", "4", "--n-heads", "4", "--mtp-heads", "3", "--mtp-kind", "cascaded",
        "--dropout", "0.1"]


def _run(argv: list[str], dry: bool) -> None:
    print("$ speechmtp " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if dry:
        return
    from .cli import main as cli

    rc = cli(argv)
    if rc:
        raise SpeechMTPError(f"stage failed (exit {rc}): speechmtp {' '.join(argv)}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="speechmtp recipe default-voice", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="default", help="codecs/NAME and checkpoints/NAME")
    ap.add_argument("--data", default="data/corpus", help="corpus folder (made by stage 1)")
    ap.add_argument("--scale", choices=sorted(SCALES), default=None, help="default: gpu if CUDA is available")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="synthesise at most this many training sentences")
    ap.add_argument("--stages", default="corpus,codec,lm,heads,report")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    import torch

    scale = SCALES[a.scale or ("gpu" if torch.cuda.is_available() else "cpu")]
    stages = set(a.stages.split(","))
    unknown = stages - {"corpus", "codec", "lm", "heads", "report"}
    if unknown:
        raise SpeechMTPError(f"unknown stages {sorted(unknown)}; use corpus,codec,lm,heads,report")
    dev = ["--device", a.device] if a.device else []
    thr = ["--threads", str(a.threads)] if a.threads else []
    data = Path(a.data)
    codec_out = REPO / "codecs" / a.name
    lm_out = REPO / "checkpoints" / a.name
    heads_out = REPO / "checkpoints" / f"{a.name}-distilled"  # the voice to ship: distilled heads on the best base
    runs = REPO / "runs"
    if "corpus" in stages:
        _run(["data", "synth", "--out", str(data), "--heldout-first"] + (["--limit", str(a.limit)] if a.limit else []),
             a.dry_run)
    manifest = data / "manifest.jsonl"
    if "codec" in stages:
        resume = ["--resume"] if (codec_out / "train_state.pt").exists() else []
        _run(["codec", "train", "--data", str(manifest), "--out", str(codec_out), "--steps", str(scale["codec_steps"]),
              "--batch-size", str(scale["codec_batch"]), "--cache-dir", str(runs / "codec_cache")] + resume + dev + thr,
             a.dry_run)
    if "lm" in stages:
        resume = ["--resume"] if (lm_out / "train_state.pt").exists() else []
        _run(["train", "--data", str(manifest), "--codec", a.name, "--out", str(lm_out),
              "--cache-dir", str(runs / "token_cache"), "--steps", str(scale["lm_steps"]),
              "--batch-size", str(scale["lm_batch"]), "--lr", scale["lr"], "--warmup", "200",
              *ARCH, "--max-seq-len", "1024", "--max-seconds", "15", "--val-every", "250", "--val-fraction", "0.03",
              "--keep-best", "--save-every", "100"] + resume + dev + thr, a.dry_run)
    if "heads" in stages:
        resume = ["--resume"] if (heads_out / "train_state.pt").exists() else []
        base = lm_out / "best" if (lm_out / "best" / "config.json").is_file() or a.dry_run else lm_out
        _run(["train", "--data", str(manifest), "--out", str(heads_out), "--from", str(base), "--heads-only",
              "--distill", "--cache-dir", str(runs / "token_cache"), "--steps", str(scale["heads_steps"]),
              "--batch-size", str(scale["lm_batch"]), "--lr", "1e-3", "--max-seconds", "15", "--val-fraction", "0.03",
              "--val-every", "250", "--save-every", "100"] + resume + dev + thr, a.dry_run)
    if "report" in stages:
        if (heads_out / "config.json").is_file():
            lm_out = heads_out
        _run(["eval", "--checkpoint", str(lm_out), "--heldout", str(data / "heldout.jsonl"), "--n", "50",
              "--out", str(lm_out / "eval.json")] + dev, a.dry_run)
        _run(["bench", "voice", "--checkpoint", str(lm_out), "--out", str(lm_out / "bench_voice.json")] + dev + thr,
             a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
