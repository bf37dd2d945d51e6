"""`speechmtp codec roundtrip IN.wav -o OUT.wav`: encode and decode a file, to hear what a codec keeps."""
from __future__ import annotations

import argparse
import math
import time

import torch

from ..utils import SpeechMTPError, read_audio, write_audio
from . import load_codec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="speechmtp codec roundtrip", description=__doc__)
    p.add_argument("input", help="audio file (any rate; resampled to the codec's)")
    p.add_argument("-o", "--output", required=True, help="where to write the decoded WAV")
    p.add_argument("--codec", default="default", help="'encodec', 'encodec:BW' or a built-in codec folder/name")
    p.add_argument("--encodec-weights", default=None, help="local EnCodec weights file or folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--stream-chunk", type=int, default=None, metavar="N",
                   help="decode with the streaming decoder, N frames per push (and compare with offline)")
    args = p.parse_args(argv)
    if args.stream_chunk is not None and args.stream_chunk < 1:
        raise SpeechMTPError(f"--stream-chunk must be at least 1 frame, got {args.stream_chunk}")

    wav, sr = read_audio(args.input)  # before loading the codec: a wrong path fails at once
    codec = load_codec(args.codec, device=args.device, encodec_weights=args.encodec_weights)
    seconds = len(wav) / sr
    print(f"input   {args.input}: {seconds:.2f} s at {sr} Hz")

    with torch.inference_mode():
        t0 = time.perf_counter()
        codes = codec.encode(wav, sample_rate=sr)  # (1, Q, T)
        _sync(codec.device)
        t_enc = time.perf_counter() - t0
        bps = codec.n_codebooks * math.log2(codec.codebook_size) * codec.frame_rate
        print(f"codec   {codec.name}: {codec.sample_rate} Hz, {codec.frame_rate:g} frames/s, "
              f"{codec.n_codebooks} x {codec.codebook_size} codebooks = {bps / 1000:.2f} kbps")
        print(f"codes   {tuple(codes.shape)} {str(codes.dtype).replace('torch.', '')}; "
              f"encode {t_enc * 1000:.0f} ms (RTF {t_enc / seconds:.3f})")

        t0 = time.perf_counter()
        out = codec.decode(codes)  # (1, 1, T * hop)
        _sync(codec.device)
        t_dec = time.perf_counter() - t0
        print(f"decode  {tuple(out.shape)} in {t_dec * 1000:.0f} ms (RTF {t_dec / seconds:.3f})")

        if args.stream_chunk:
            n = args.stream_chunk
            dec = codec.stream_decoder()
            t0 = time.perf_counter()
            parts = [dec.push(codes[..., i:i + n]) for i in range(0, codes.shape[-1], n)]
            parts.append(dec.flush())
            _sync(codec.device)
            t_str = time.perf_counter() - t0
            streamed = torch.cat(parts, dim=-1)
            diff = (streamed - out).abs().max().item() if streamed.shape == out.shape else float("inf")
            print(f"stream  {len(parts) - 1} pushes of {n} frame(s) in {t_str * 1000:.0f} ms "
                  f"(RTF {t_str / seconds:.3f}); max |stream - offline| = {diff:.2e}")
            out = streamed

    n_out = int(round(len(wav) * codec.sample_rate / sr))  # drop the padding of the last frame
    write_audio(args.output, out[0, 0, :n_out], codec.sample_rate)
    print(f"wrote   {args.output} ({n_out / codec.sample_rate:.2f} s at {codec.sample_rate} Hz)")
    return 0
