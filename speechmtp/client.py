"""Python and command-line client for the streaming server (protocol: docs/protocol.md).

`stream_tts(url, chunks, **config)` sends text chunks (a list, or any async iterable, e.g. an LLM's
tokens) while audio comes back; `synthesize_remote(url, text, **config)` is the blocking one-call form.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import AsyncIterable, Callable, Iterable

import numpy as np

from .audio_format import decode_bytes, mulaw_to_pcm16
from .utils import SpeechMTPError


@dataclass
class StreamResult:
    audio: bytearray = field(default_factory=bytearray)  # wire bytes as received
    ready: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # every JSON message after ready (flushed, error, audio, ...)
    chunk_times: list[tuple[float, int]] = field(default_factory=list)  # (arrival s since start, samples)
    ttfa_s: float | None = None  # first text sent -> first audio received
    close_code: int | None = None

    @property
    def format(self) -> str:
        return self.ready["audio"]["format"]

    @property
    def sample_rate(self) -> int:
        return self.ready["audio"]["sample_rate"]

    def samples(self) -> np.ndarray:
        return decode_bytes(bytes(self.audio), self.format)


async def _aiter(chunks):
    if hasattr(chunks, "__aiter__"):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


async def stream_tts(url: str, chunks: Iterable[str] | AsyncIterable[str], on_audio: Callable[[bytes], None] | None = None,
                     headers: dict | None = None, on_ready: Callable[[dict], None] | None = None,
                     **config) -> StreamResult:
    """Open a session with `config` fields (voice, mode, seed, format, sample_rate, api_key, ...),
    send every text chunk as it comes, then "end"; collect audio until "done"."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        return await _stream(url, chunks, on_audio, headers, on_ready, config, connect, ConnectionClosed)
    except InvalidStatus as e:  # refused during the handshake: wrong key header, foreign origin, bad path
        body = e.response.body.decode("utf-8", "replace").strip()
        raise SpeechMTPError(f"server refused the connection: HTTP {e.response.status_code} {body}") from None


async def _stream(url, chunks, on_audio, headers, on_ready, config, connect, ConnectionClosed) -> StreamResult:
    res = StreamResult()
    t0 = time.perf_counter()
    first_text: float | None = None
    async with connect(url, additional_headers=headers, max_size=2**24, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "config", **{k: v for k, v in config.items() if v is not None}}))
        msg = json.loads(await ws.recv())
        if msg.get("type") != "ready":
            raise SpeechMTPError(f"server refused the session: {msg.get('code')}: {msg.get('message')}")
        res.ready = msg
        if on_ready is not None:
            on_ready(msg)
        bps = 2 if res.format == "pcm16" else 1

        async def sender():
            nonlocal first_text
            async for c in _aiter(chunks):
                if c and c.strip():
                    if first_text is None:
                        first_text = time.perf_counter()
                    await ws.send(json.dumps({"type": "text", "text": c}))
            await ws.send(json.dumps({"type": "end"}))

        send_task = asyncio.create_task(sender())
        try:
            async for m in ws:
                if isinstance(m, bytes):
                    now = time.perf_counter()
                    if res.ttfa_s is None and first_text is not None:
                        res.ttfa_s = now - first_text
                    res.audio += m
                    res.chunk_times.append((now - t0, len(m) // bps))
                    if on_audio is not None:
                        on_audio(m)
                    continue
                ev = json.loads(m)
                if ev.get("type") == "done":
                    res.done = ev
                elif ev.get("type") == "error" and ev.get("fatal"):
                    raise SpeechMTPError(f"server error {ev['code']}: {ev['message']}")
                else:
                    res.events.append(ev)
        except ConnectionClosed:
            pass
        finally:
            send_task.cancel()
            await asyncio.gather(send_task, return_exceptions=True)
        res.close_code = ws.close_code
    if not res.done:
        raise SpeechMTPError(f"the server closed the stream before it was done (close code {res.close_code})")
    return res


def synthesize_remote(url: str, text: str, **config) -> tuple[np.ndarray, int, dict]:
    """Blocking: text -> (float32 samples, sample rate, the server's done message)."""
    res = asyncio.run(stream_tts(url, [text], **config))
    return res.samples(), res.sample_rate, res.done


# ---------------------------------------------------------------------------------------------
# command line


async def _stdin_lines():
    """Lines from stdin as they arrive (an LLM piping tokens line by line), without blocking the loop."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line


class _Player:
    """Plays wire bytes as they arrive through sounddevice (imported only when --play is asked)."""

    def __init__(self, fmt: str, rate: int):
        try:
            import sounddevice as sd
        except (ImportError, OSError) as e:
            raise SpeechMTPError(f"--play needs the sounddevice package and PortAudio ({e}); "
                                 "pip install 'speechmtp[demos]', or write a file with -o instead") from None
        try:
            self.stream = sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16")
            self.stream.start()
        except Exception as e:  # noqa: BLE001 - PortAudio raises its own types
            raise SpeechMTPError(f"no audio output device to play on ({e}); write a file with -o instead") from None
        self.fmt = fmt

    def __call__(self, data: bytes) -> None:
        pcm = np.frombuffer(data, "<i2") if self.fmt == "pcm16" else mulaw_to_pcm16(data)
        self.stream.write(pcm.tobytes())  # blocks for playback time: that is the pacing we want

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="speechmtp client", description="Stream text to a speechmtp server; save or play the audio.")
    p.add_argument("text", help='text to speak; "-" reads stdin and sends each line as it arrives')
    p.add_argument("-o", "--output", help="WAV file to write (.raw/.pcm/.ulaw: the wire bytes as they are)")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    p.add_argument("--play", action="store_true", help="play as it streams (needs sounddevice)")
    p.add_argument("--format", choices=["pcm16", "mulaw"], default="pcm16")
    p.add_argument("--rate", type=int, default=None, help="8000, 16000, 24000 or 48000 (default: the voice's)")
    p.add_argument("--mode", choices=["ntp", "mtp", "mtp-relaxed"], default=None)
    p.add_argument("--voice", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--api-key-env", default="SPEECHMTP_API_KEY", help="environment variable holding the API key")
    args = p.parse_args(argv)
    if not args.output and not args.play:
        raise SpeechMTPError("nothing to do with the audio: give -o out.wav and/or --play")
    if args.text != "-" and not args.text.strip():
        raise SpeechMTPError("text is empty: give something to say, or - to read stdin")
    chunks = _stdin_lines() if args.text == "-" else [args.text]
    key = os.environ.get(args.api_key_env) or None
    headers = {"Authorization": f"Bearer {key}"} if key else None
    player = None

    def on_ready(ready: dict) -> None:
        nonlocal player
        if args.play:  # opened once the server says which rate it sends
            player = _Player(ready["audio"]["format"], ready["audio"]["sample_rate"])

    def on_audio(data: bytes) -> None:
        if player is not None:
            player(data)

    try:
        res = asyncio.run(stream_tts(args.url, chunks, on_audio=on_audio, on_ready=on_ready, headers=headers, voice=args.voice,
                                     mode=args.mode, seed=args.seed, temperature=args.temperature,
                                     format=args.format, sample_rate=args.rate))
    except OSError as e:
        raise SpeechMTPError(f"cannot connect to {args.url} ({e}); is `speechmtp serve` running?") from None
    finally:
        if player is not None:
            player.close()
    if args.output:
        if args.output.endswith((".raw", ".pcm", ".ulaw")):
            from .utils import atomic_write_bytes

            atomic_write_bytes(args.output, bytes(res.audio))
        else:  # the int16 samples exactly as sent (float round trips would shift some by one LSB)
            import io

            import soundfile as sf

            from .utils import atomic_write_bytes

            pcm = np.frombuffer(bytes(res.audio), "<i2") if res.format == "pcm16" else mulaw_to_pcm16(bytes(res.audio))
            buf = io.BytesIO()
            sf.write(buf, pcm, res.sample_rate, format="WAV", subtype="PCM_16")
            atomic_write_bytes(args.output, buf.getvalue())
    t = res.done.get("timings", {})
    audio_s = res.done.get("audio", {}).get("samples", 0) / res.sample_rate
    ttfa = f"{res.ttfa_s * 1000:.0f} ms" if res.ttfa_s is not None else "n/a"
    print(f"{audio_s:.2f} s of {res.format} audio at {res.sample_rate} Hz; time to first audio {ttfa}; "
          f"server RTF {t.get('rtf')}, {t.get('accepted_per_step')} frames/step"
          + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
    return 0
