"""Type text, hear it streamed from the speaker as it is generated.

In-process engine by default; `--url ws://HOST:PORT` speaks through a running `speechmtp serve`.
Each line you type is one utterance; time to first audio is printed for each.

    .venv/bin/python demos/speak.py [--checkpoint default] [--mode mtp] [--url ws://127.0.0.1:8765]
    echo "Hello there." | .venv/bin/python demos/speak.py --list-devices
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audio_io import AudioUnavailable, JitterBufferPlayer, list_devices  # noqa: E402


def engine_chunks(engine, text: str, opts) -> Iterator[np.ndarray]:
    yield from engine.stream(text, opts)


def server_chunks(url: str, text: str, mode: str, seed: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """(sample_rate, float32 chunk) pairs from a running server, PCM16 over the WebSocket."""
    from websockets.sync.client import connect

    with connect(url, max_size=2**22) as ws:
        ws.send(json.dumps({"type": "config", "mode": mode, "seed": seed, "format": "pcm16"}))
        ready = json.loads(ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"server refused the session: {ready}")
        rate = int(ready["audio"]["sample_rate"])
        ws.send(json.dumps({"type": "text", "text": text}))
        ws.send(json.dumps({"type": "end"}))
        for msg in ws:
            if isinstance(msg, bytes):
                yield rate, np.frombuffer(msg, dtype="<i2").astype(np.float32) / 32768.0
            else:
                ev = json.loads(msg)
                if ev.get("type") == "error":
                    raise RuntimeError(f"server error {ev.get('code')}: {ev.get('message')}")
                if ev.get("type") == "done":
                    return


def play_stream(chunks: Iterator[np.ndarray], player: JitterBufferPlayer, t0: float) -> float | None:
    """Feed chunks to the player; return time to first audio in seconds since `t0` (text submitted)."""
    ttfa = None
    for chunk in chunks:
        if ttfa is None:
            ttfa = time.perf_counter() - t0
        player.put(chunk)
    player.finish()
    return ttfa


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--url", default=None, help="speak through a running server instead of in-process")
    ap.add_argument("--mode", default="mtp", choices=["ntp", "mtp", "mtp-relaxed"])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None, help="audio output device (index or name)")
    ap.add_argument("--torch-device", default=None)
    ap.add_argument("--list-devices", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        engine = None
        if args.url is None:
            from speechmtp.engine import Engine

            engine = Engine.load(args.checkpoint, device=args.torch_device)
        print("type a line and press Enter to hear it; Ctrl-D to quit", file=sys.stderr)
        for line in sys.stdin:
            text = line.strip()
            if not text:
                continue
            t0 = time.perf_counter()
            if engine is not None:
                rate = engine.sample_rate
                chunks = engine_chunks(engine, text, engine.options(mode=args.mode, seed=args.seed))
            else:
                pairs = server_chunks(args.url, text, args.mode, args.seed)
                first = next(pairs)
                rate = first[0]
                chunks = (c for _, c in _chain([first], pairs))
            player = JitterBufferPlayer(rate)
            with player.open_output(args.device):
                ttfa = play_stream(chunks, player, t0)
                player.drained.wait(timeout=600)
            print(f"time to first audio {ttfa * 1e3:.0f} ms, underruns {player.underruns}", file=sys.stderr)
    except AudioUnavailable as e:
        print(f"speak: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _chain(*its):
    for it in its:
        yield from it


if __name__ == "__main__":
    sys.exit(main())
