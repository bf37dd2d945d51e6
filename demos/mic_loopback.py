"""Microphone -> codec encode -> tokens -> streaming decode -> speaker, live.

Hear what the codec keeps: every block of frames is encoded (with a little past audio as
context, since the encoder is causal) and pushed through the stateful stream decoder.

    .venv/bin/python demos/mic_loopback.py [--codec default] [--frames 2] [--device IN,OUT] [--list-devices]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audio_io import AudioUnavailable, BlockRecorder, JitterBufferPlayer, list_devices  # noqa: E402


class LoopbackProcessor:
    """The audio path without devices: push blocks of `frames` codec frames, get decoded audio back."""

    def __init__(self, codec, frames: int = 2, context_frames: int = 50):
        self.codec = codec
        self.frames = frames
        self.block = frames * codec.hop_length
        self.context = context_frames * codec.hop_length
        self.history = np.zeros(0, dtype=np.float32)
        self.decoder = codec.stream_decoder()
        self.tokens = 0

    @torch.inference_mode()
    def process(self, block: np.ndarray) -> np.ndarray:
        assert block.size == self.block, f"expected blocks of {self.block} samples"
        audio = np.concatenate([self.history, block])[-(self.context + self.block):]
        self.history = audio
        codes = self.codec.encode(torch.from_numpy(audio)[None, None])  # (1, Q, T)
        new = codes[..., -self.frames:]
        self.tokens += new.numel()
        return self.decoder.push(new).reshape(-1).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="default", help="codec spec: a codecs/ name, a folder, or encodec[:BW]")
    ap.add_argument("--encodec-weights", default=None)
    ap.add_argument("--frames", type=int, default=2, help="codec frames per block (latency vs overhead)")
    ap.add_argument("--device", default=None, help="audio device(s): index or name, or IN,OUT")
    ap.add_argument("--torch-device", default=None)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    ap.add_argument("--list-devices", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        from speechmtp.codec import load_codec

        codec = load_codec(args.codec, device=args.torch_device, encodec_weights=args.encodec_weights)
        dev_in = dev_out = args.device
        if args.device and "," in args.device:
            dev_in, dev_out = args.device.split(",", 1)
        proc = LoopbackProcessor(codec, frames=args.frames)
        rec = BlockRecorder(codec.sample_rate, proc.block)
        player = JitterBufferPlayer(codec.sample_rate, prebuffer_s=2 * proc.block / codec.sample_rate)
        with rec.open_input(dev_in), player.open_output(dev_out):
            print(f"loopback through {args.codec}: {codec.n_codebooks} codebooks x {codec.frame_rate:g} frames/s "
                  f"= {codec.n_codebooks * codec.frame_rate:g} tokens/s; Ctrl-C to stop")
            t0 = time.perf_counter()
            lat: list[float] = []
            while not args.seconds or time.perf_counter() - t0 < args.seconds:
                if not rec.ready.wait(0.5):
                    continue
                for captured, block in rec.pop_all():
                    player.put(proc.process(block))
                    lat.append(time.perf_counter() - captured)
                if len(lat) >= 25:
                    el = time.perf_counter() - t0
                    print(f"\r{proc.tokens / el:7.0f} tokens/s   processing latency p50 {np.median(lat) * 1e3:5.1f} ms "
                          f"+ block {proc.block / codec.sample_rate * 1e3:.0f} ms   underruns {player.underruns}",
                          end="", flush=True)
                    lat.clear()
    except AudioUnavailable as e:
        print(f"mic loopback: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
