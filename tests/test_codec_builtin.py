"""The built-in codec: streaming == offline for any chunking, file round trips, input checking."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechmtp.codec.base import Codec, StreamDecoder
from speechmtp.codec.builtin import BuiltinCodec, BuiltinCodecConfig, tiny_config
from speechmtp.utils import SpeechMTPError

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=[1, 2], ids=["S1", "S2"])
def codec(request) -> BuiltinCodec:
    """Both iSTFT layouts: one sub-frame per codec frame (the default) and two (its own OLA path)."""
    torch.manual_seed(0)
    # S1 uses n_fft = 2 * hop like the default config, which has its own one-frame fast path
    n_fft = 640 if request.param == 1 else 320
    c = BuiltinCodec(tiny_config(subframes=request.param, n_fft=n_fft, dec_gru_layers=2, dec_mlp_layers=1,
                                 dec_kernel=3), device="cpu")
    with torch.no_grad():  # louder head than the quiet init, so differences are not hidden below 1e-4
        c.decoder.head.weight.mul_(10)
        c.decoder.head.bias.add_(2.0)
    return c


def random_codes(c: BuiltinCodec, b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c.codebook_size, (b, c.n_codebooks, t), generator=g)


def stream(dec: StreamDecoder, codes: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, i = [], 0
    for n in sizes:
        outs.append(dec.push(codes[:, :, i:i + n]))
        i += n
    assert i == codes.shape[-1]
    outs.append(dec.flush())
    return torch.cat(outs, -1)


def assert_close_to(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.shape == ref.shape
    peak = ref.abs().max().item()
    assert peak > 1e-3, "reference is silent: the comparison would prove nothing"
    assert (y - ref).abs().max().item() <= 1e-4 * peak


def test_interface_and_shapes(codec):
    assert isinstance(codec, Codec) and isinstance(codec, torch.nn.Module)
    assert codec.hop_length == codec.cfg.hop_length
    assert codec.frame_rate == codec.sample_rate / codec.hop_length <= 50
    codes = random_codes(codec, 2, 9)
    wav = codec.decode(codes)
    assert wav.shape == (2, 1, 9 * codec.hop_length) and wav.dtype == torch.float32


def test_codes_to_latents_matches_encodec_decode(codec):
    codes = random_codes(codec, 2, 5)
    ours = codec.codes_to_latents(codes)
    ref = codec.quantizer.decode(codes.transpose(0, 1))  # encodec's own path: (Q, B, T) -> (B, D, T)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def stream_decoder(c: BuiltinCodec, path: str) -> StreamDecoder:
    """path "numpy": short chunks take the CPU fast path (the default); "torch": every chunk takes the torch path."""
    dec = c.stream_decoder()
    if path == "torch":
        dec.fast_max_frames = 0
    return dec


@pytest.mark.parametrize("path", ["numpy", "torch"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_stream_equals_decode_fixed_chunks(codec, chunk, path):
    codes = random_codes(codec, 2, 23, seed=chunk)
    ref = codec.decode(codes)
    t = codes.shape[-1]
    sizes = [chunk] * (t // chunk) + ([t % chunk] if t % chunk else [])
    assert_close_to(stream(stream_decoder(codec, path), codes, sizes), ref)


def test_one_frame_pushes_take_the_numpy_path_and_equal_torch(codec, monkeypatch):
    codes = random_codes(codec, 1, 30, seed=11)
    ref = stream(stream_decoder(codec, "torch"), codes, [1] * 30)
    dec = codec.stream_decoder()
    calls = {"numpy": 0, "torch": 0}
    for name in calls:
        method = getattr(dec, f"_push_{name}")

        def spy(x, method=method, name=name):
            calls[name] += 1
            return method(x)
        monkeypatch.setattr(dec, f"_push_{name}", spy)
    y = stream(dec, codes, [1] * 30)
    assert calls == {"numpy": 30, "torch": 0}
    assert y.dtype == torch.float32
    assert_close_to(y, ref)
    assert_close_to(y, codec.decode(codes))


def test_paths_share_state(codec):
    """Chunk sizes on both sides of fast_max_frames in one stream: each path carries on from the other's state."""
    codes = random_codes(codec, 2, 30, seed=12)
    ref = codec.decode(codes)
    dec = codec.stream_decoder()
    dec.fast_max_frames = 2
    assert_close_to(stream(dec, codes, [5, 1, 2, 3, 1, 1, 4, 2, 6, 1, 2, 2]), ref)  # torch first
    assert_close_to(stream(dec, codes, [1, 7, 2, 1, 3, 3, 1, 12]), ref)  # numpy first
    dec.fast_max_frames = 30  # raised after the decoder was made
    assert_close_to(stream(dec, codes, [25, 5]), ref)


def test_stream_equals_decode_random_partitions(codec):
    rng = np.random.default_rng(1)
    codes = random_codes(codec, 2, 40, seed=5)
    ref = codec.decode(codes)
    dec = codec.stream_decoder()
    dec.fast_max_frames = 4  # so that both paths take part
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 40), size=rng.integers(1, 10), replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [40]])).tolist()
        assert_close_to(stream(dec, codes, sizes), ref)  # flush leaves the decoder ready for a new stream


def test_push_returns_hop_per_frame_and_is_causal(codec):
    codes = random_codes(codec, 1, 12, seed=3)
    other = codes.clone()
    other[:, :, 8:] = (other[:, :, 8:] + 1) % codec.codebook_size  # different future
    a, b = codec.decode(codes), codec.decode(other)
    n = 8 * codec.hop_length
    assert (a[..., :n] - b[..., :n]).abs().max() <= 1e-6 * a.abs().max()  # the past never depends on future frames
    assert not torch.allclose(a[..., n:], b[..., n:])
    dec = codec.stream_decoder()
    assert dec.push(codes[:, :, :1]).shape == (1, 1, codec.hop_length)
    assert dec.push(codes[:, :, 1:4]).shape == (1, 1, 3 * codec.hop_length)


def test_reset_forgets_state(codec):
    codes = random_codes(codec, 2, 10, seed=7)
    ref = codec.decode(codes)
    dec = codec.stream_decoder()
    dec.push(random_codes(codec, 2, 6, seed=8))  # an abandoned stream
    dec.reset()
    assert_close_to(stream(dec, codes, [4, 6]), ref)


def test_wrong_streamer_is_caught(codec):
    """Decoding chunks independently (no carried state) must fail the same check, or the check is blind."""
    codes = random_codes(codec, 2, 12, seed=9)
    ref = codec.decode(codes)
    naive = torch.cat([codec.decode(codes[:, :, i:i + 3]) for i in range(0, 12, 3)], -1)
    with pytest.raises(AssertionError):
        assert_close_to(naive, ref)


def test_stream_batch_change_and_bad_codes(codec):
    dec = codec.stream_decoder()
    dec.push(random_codes(codec, 2, 1))
    with pytest.raises(SpeechMTPError, match="batch size"):
        dec.push(random_codes(codec, 1, 1))
    dec.reset()
    bad = random_codes(codec, 1, 2)
    bad[0, 0, 1] = codec.codebook_size
    with pytest.raises(SpeechMTPError, match="must lie in"):
        dec.push(bad)
    bad[0, 0, 1] = -1  # the numpy path's one-reduction bounds check must catch this too
    with pytest.raises(SpeechMTPError, match="must lie in"):
        dec.push(bad[:, :, 1:])
    with pytest.raises(SpeechMTPError, match="shape"):
        dec.push(torch.zeros(1, codec.n_codebooks + 1, 1, dtype=torch.long))
    with pytest.raises(SpeechMTPError, match="integers"):
        dec.push(torch.zeros(1, codec.n_codebooks, 1))


def test_save_load_round_trip(codec, tmp_path):
    (tmp_path / "README.md").write_text("card\n")
    codec.save(tmp_path)
    assert (tmp_path / "README.md").read_text() == "card\n"  # a model card is kept
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "builtin"
    loaded = BuiltinCodec.load(tmp_path, device="cpu")
    codes = random_codes(codec, 2, 6)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))
    wav = torch.randn(1, 4000) * 0.1
    assert torch.equal(loaded.encode(wav), codec.encode(wav))


def test_load_errors(codec, tmp_path):
    with pytest.raises(SpeechMTPError, match="not found"):
        BuiltinCodec.load(tmp_path / "nope")
    codec.save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpeechMTPError, match="corrupt"):
        BuiltinCodec.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(SpeechMTPError, match="no model.safetensors"):
        BuiltinCodec.load(tmp_path)
    codec.save(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpeechMTPError, match="not valid JSON"):
        BuiltinCodec.load(tmp_path)
    other = BuiltinCodec(tiny_config(dec_channels=8), device="cpu")
    other.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dec_channels"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpeechMTPError, match="does not match"):
        BuiltinCodec.load(tmp_path)
    cfg["kind"] = "encodec"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpeechMTPError, match="kind"):
        BuiltinCodec.load(tmp_path)


def test_encode_any_rate_and_layout(codec):
    sr = codec.sample_rate
    t = np.arange(sr // 2) / sr
    mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    codes = codec.encode(mono)
    assert codes.dtype == torch.int64 and codes.shape == (1, codec.n_codebooks, len(mono) // codec.hop_length)
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    # the same tone at 22.05 kHz in stereo int16 gives (nearly) the same codes after resampling
    t2 = np.arange(22050 // 2) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 220 * t2)] * 2) * 0.3 * 32767
    codes2 = codec.encode(stereo.astype(np.int16), sample_rate=22050)
    assert codes2.shape == codes.shape
    assert (codes2 == codes).float().mean() > 0.5
    batch = codec.encode(torch.from_numpy(np.stack([mono, mono]))[:, None])  # (B, C, N)
    assert batch.shape[0] == 2 and torch.equal(batch[0], batch[1])
    # a length that is not a whole number of frames is padded: ceil(N / hop) frames
    assert codec.encode(mono[:-7]).shape[-1] == len(mono) // codec.hop_length


def test_bad_inputs(codec):
    with pytest.raises(SpeechMTPError, match="empty"):
        codec.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(SpeechMTPError, match="NaN"):
        codec.encode(np.full(400, np.nan, dtype=np.float32))
    with pytest.raises(SpeechMTPError, match="shape"):
        codec.encode(np.zeros((1, 1, 1, 400), dtype=np.float32))
    with pytest.raises(SpeechMTPError, match="sample rate"):
        codec.encode(np.zeros(400, dtype=np.float32), sample_rate=-1)
    with pytest.raises(SpeechMTPError, match="must lie in"):
        codec.decode(torch.full((1, codec.n_codebooks, 2), codec.codebook_size))
    with pytest.raises(SpeechMTPError, match="integers"):
        codec.decode(torch.zeros(1, codec.n_codebooks, 2))
    with pytest.raises(SpeechMTPError, match="50 Hz"):
        BuiltinCodec(BuiltinCodecConfig(hop_length=160), device="cpu")
    with pytest.raises(SpeechMTPError, match="sample_rate"):
        BuiltinCodec(BuiltinCodecConfig(sample_rate=44100), device="cpu")


def test_init_codebooks_reduces_quantisation_error():
    torch.manual_seed(0)
    c = BuiltinCodec(tiny_config(), device="cpu")
    x = torch.randn(500, c.cfg.latent_dim)

    def err():
        z = x.T[None]  # (1, D, N)
        codes = c.quantizer.encode(z, c.frame_rate)  # (Q, 1, N)
        return (c.quantizer.decode(codes) - z).pow(2).mean().item()

    before = err()
    c.init_codebooks(x, iters=5)
    assert err() < 0.5 * before
    assert all(bool(layer._codebook.inited) for layer in c.quantizer.vq.layers)
