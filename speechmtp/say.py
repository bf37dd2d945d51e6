"""`speechmtp say`: text -> speech with a local voice, streamed sentence by sentence.

The WAV is written while audio is generated (into a temporary file renamed at the end, so an
interrupted run never leaves half a file); --play plays chunks as they come.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from . import text as textmod
from .audio_format import float_to_pcm16
from .engine import Engine
from .utils import SpeechMTPError


def read_text(arg: str | None, file: str | None) -> str:
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpeechMTPError(f"script file not found: {path}") from None
        except UnicodeDecodeError as e:
            raise SpeechMTPError(f"script file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise SpeechMTPError(f"cannot read script file {path}: {e.strerror}") from None
    elif arg == "-":
        text = sys.stdin.read()
    elif arg is None:
        raise SpeechMTPError('give the text to say, "-" for stdin, or --file script.txt')
    else:
        text = arg
    if not text.strip():
        raise SpeechMTPError("text is empty: give something to say")
    if len(text) > textmod.MAX_TEXT_CHARS:
        raise SpeechMTPError(f"text is {len(text)} characters; the limit is {textmod.MAX_TEXT_CHARS} "
                             "per run: split the script into parts")
    textmod.encode(text)  # raises "nothing speakable" for text wholly in a script the voice cannot read
    return text


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="speechmtp say", description="Synthesise text with a local voice.")
    p.add_argument("text", nargs="?", help='text to say ("-" reads stdin)')
    p.add_argument("-f", "--file", help="read the text from this UTF-8 file")
    p.add_argument("-o", "--output", help="WAV file to write")
    p.add_argument("--checkpoint", default="default", help="voice folder or name under checkpoints/ (default: the shipped voice)")
    p.add_argument("--decode", choices=["ntp", "mtp", "mtp-relaxed"], default=None,
                   help="ntp: one frame per step; mtp: lossless multi-frame drafts; mtp-relaxed: faster, lossy "
                        "(default: the voice's, from its voice.json: the fastest lossless mode measured for it)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the voice's)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="cap per sentence")
    p.add_argument("--play", action="store_true", help="play while synthesising (needs sounddevice)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if present)")
    p.add_argument("--stats", action="store_true", help="print all timings as JSON")
    args = p.parse_args(argv)
    if not args.output and not args.play:
        raise SpeechMTPError("nothing to do with the audio: give -o out.wav and/or --play")
    text = read_text(args.text, args.file)

    engine = Engine.load(args.checkpoint, device=args.device, max_batch=1)
    opts = engine.options(mode=args.decode, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=args.seed, max_frames=args.max_frames)
    sr = engine.sample_rate
    player = writer = tmp = None
    try:
        if args.play:
            from .client import _Player

            player = _Player("pcm16", sr)
        if args.output:
            import soundfile as sf

            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            writer = sf.SoundFile(tmp, "w", samplerate=sr, channels=1, subtype="PCM_16", format="WAV")
        t0 = time.perf_counter()
        ttfa = None
        for chunk in engine.stream(text, opts):
            if ttfa is None:
                ttfa = time.perf_counter() - t0
            pcm = float_to_pcm16(chunk)  # the same rounding as the server's PCM16
            if writer is not None:
                writer.write(pcm)
            if player is not None:
                player(pcm.astype("<i2").tobytes())
        wall = time.perf_counter() - t0
        if writer is not None:
            writer.close()
            writer = None
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the WAV from other users
            os.replace(tmp, args.output)
            tmp = None
    finally:
        if writer is not None:
            writer.close()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if player is not None:
            player.close()
        engine.close()
    t = engine.last_timings
    audio_s = t["audio_s"]
    print(f"{audio_s:.2f} s of audio, {t['sentences']} sentence(s); time to first audio "
          f"{(ttfa or 0) * 1000:.0f} ms; RTF {wall / max(audio_s, 1e-9):.3f} ({opts.mode}, "
          f"{t['accepted_per_step']} frames/step)" + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    if args.stats:
        import json

        print(json.dumps({**t, "wall_s": round(wall, 4), "ttfa_wall_ms": round((ttfa or 0) * 1000, 2)}, indent=2))
    return 0
