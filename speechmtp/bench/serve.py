"""`speechmtp bench serve`: N concurrent WebSocket sessions against a loopback server.

Each client runs sessions back to back for a bounded time. Per session: time to first audio (first
text sent -> first audio byte), RTF of the stream (text sent -> done, over audio length), and
underruns: playback starts when the first chunk arrives (plus a jitter buffer) and runs in real
time; a chunk arriving after its playback time is an underrun, and playback stalls until it comes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from ..client import stream_tts
from ..engine import Engine
from ..server import ServerConfig, TTSServer
from ..utils import SpeechMTPError

DEFAULT_TEXT = ("The quick brown fox jumps over the lazy dog. Streaming speech starts before the sentence is done. "
                "Every client here shares one model through a batched decoder.")


def underruns(chunk_times: list[tuple[float, int]], sample_rate: int, jitter_s: float) -> tuple[int, float]:
    """(late chunks, total stall seconds) for real-time playback starting at the first chunk + jitter."""
    if not chunk_times:
        return 0, 0.0
    clock = chunk_times[0][0] + jitter_s  # when sample 0 plays
    late, stall, played = 0, 0.0, 0
    for arrival, n in chunk_times:
        due = clock + played / sample_rate
        if arrival > due:
            late += 1
            stall += arrival - due
            clock += arrival - due  # playback waits for the chunk
        played += n
    return late, stall


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 3) if xs else None


async def _bench(engine: Engine, clients: int, seconds: float, text: str, mode: str, jitter_s: float,
                 max_sessions: int) -> dict:
    server = TTSServer({"default": engine}, ServerConfig(max_sessions=max_sessions, queue_size=clients,
                                                         queue_timeout_s=max(30.0, seconds)))
    await server.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/ws"
    records, errors = [], {}
    t_end = time.perf_counter() + seconds

    async def client(i: int):
        n = 0
        while n == 0 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            try:
                res = await stream_tts(url, [text], mode=mode, seed=i * 1000 + n)
            except Exception as e:  # noqa: BLE001 - count every failure, keep loading
                key = type(e).__name__ + (f": {e}"[:80] if str(e) else "")
                errors[key] = errors.get(key, 0) + 1
                n += 1
                continue
            wall = time.perf_counter() - t0
            audio_s = res.done["audio"]["samples"] / res.sample_rate
            late, stall = underruns(res.chunk_times, res.sample_rate, jitter_s)
            records.append({"ttfa_ms": (res.ttfa_s or 0) * 1000, "rtf": wall / max(audio_s, 1e-9), "audio_s": audio_s,
                            "late_chunks": late, "stall_ms": stall * 1000,
                            "accepted_per_step": res.done["timings"].get("accepted_per_step")})
            n += 1

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*[client(i) for i in range(clients)])
    finally:
        await server.stop()
    wall = time.perf_counter() - t0
    ttfa = [r["ttfa_ms"] for r in records]
    rtf = [r["rtf"] for r in records]
    audio = sum(r["audio_s"] for r in records)
    return {
        "clients": clients, "seconds": round(wall, 3), "sessions": len(records), "mode": engine.options(mode=mode).mode,
        "device": str(engine.device), "max_batch": engine.max_batch,
        "ttfa_ms": {"p50": _pct(ttfa, 50), "p95": _pct(ttfa, 95), "max": _pct(ttfa, 100)},
        "ttfa_ms_all": [round(x, 2) for x in ttfa],
        "rtf_per_stream": {"p50": _pct(rtf, 50), "p95": _pct(rtf, 95), "max": _pct(rtf, 100)},
        "underruns": {"jitter_buffer_ms": jitter_s * 1000, "late_chunks": sum(r["late_chunks"] for r in records),
                      "sessions_with_underrun": sum(1 for r in records if r["late_chunks"]),
                      "stall_ms_total": round(sum(r["stall_ms"] for r in records), 1)},
        "accepted_per_step_mean": _pct([r["accepted_per_step"] for r in records if r["accepted_per_step"]], 50),
        "audio_s_total": round(audio, 3), "throughput_x_realtime": round(audio / wall, 3) if wall else None,
        "errors": errors,
    }


def run_serve_bench(clients: int = 4, seconds: float = 10.0, checkpoint: str = "default", text: str = DEFAULT_TEXT,
                    mode: str | None = None, device=None, max_batch: int | None = None, max_frames: int | None = None,
                    jitter_ms: float = 50.0, engine: Engine | None = None) -> dict:
    """Start a loopback server, run `clients` concurrent sessions for about `seconds`, return the report."""
    if clients < 1 or seconds <= 0:
        raise SpeechMTPError("need --clients >= 1 and --seconds > 0")
    own = engine is None
    if own:
        engine = Engine.load(checkpoint, device=device, max_batch=max_batch or clients)
        engine.defaults = engine.options(max_frames=max_frames)  # the voice's own defaults, plus the cap
    try:
        return asyncio.run(_bench(engine, clients, seconds, text, mode, jitter_ms / 1000, max_sessions=clients))
    finally:
        if own:
            engine.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="speechmtp bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="each client starts new sessions until this time is up")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--mode", choices=["ntp", "mtp", "mtp-relaxed"], default=None, help="default: the voice's")
    p.add_argument("--max-batch", type=int, default=None, help="default: one slot per client")
    p.add_argument("--max-frames", type=int, default=None, help="cap per sentence (random test voices never stop)")
    p.add_argument("--jitter-ms", type=float, default=50.0, help="playback head start when counting underruns")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    r = run_serve_bench(a.clients, a.seconds, a.checkpoint, a.text, a.mode, a.device, a.max_batch, a.max_frames,
                        a.jitter_ms)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['clients']} clients, {r['sessions']} sessions in {r['seconds']} s on {r['device']} ({r['mode']}): "
              f"TTFA p50 {r['ttfa_ms']['p50']} ms, p95 {r['ttfa_ms']['p95']} ms; RTF per stream p50 "
              f"{r['rtf_per_stream']['p50']}, p95 {r['rtf_per_stream']['p95']}; underruns "
              f"{r['underruns']['late_chunks']} chunks in {r['underruns']['sessions_with_underrun']} sessions; "
              f"{r['throughput_x_realtime']}x real time in total; errors {r['errors'] or 'none'}")
    return 0
