"""EnCodec backend: exact streaming decode, encode shapes/rates, and local-only weights.

Uses the real 24 kHz architecture with random weights (pretrained=False): no download, no weights file.
"""
import numpy as np
import pytest
import torch

from speechmtp import streaming as S
from speechmtp.codec import encodec as E
from speechmtp.utils import SpeechMTPError

T = 30  # frames: 0.4 s, enough to get past the 7-frame start-up and exercise steady state


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(1)
    return E.EncodecCodec(bandwidth=6.0, pretrained=False)


@pytest.fixture(scope="module")
def codes(codec):
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, codec.codebook_size, (2, codec.n_codebooks, T), generator=g)


@pytest.fixture(scope="module")
def offline(codec, codes):
    return codec.decode(codes)


def stream(codec, codes, sizes, dec=None):
    dec = dec or codec.stream_decoder()
    outs, i = [], 0
    for n in sizes:
        outs.append(dec.push(codes[..., i:i + n]))
        i += n
    assert i == codes.shape[-1]
    outs.append(dec.flush())
    return torch.cat(outs, dim=-1), [o.shape[-1] for o in outs]


def assert_close(y, ref):
    assert y.shape == ref.shape
    tol = 1e-4 * ref.abs().max().item()
    assert (y - ref).abs().max().item() <= tol


def chunks(total, n):
    return [min(n, total - i) for i in range(0, total, n)]


def test_offline_decode_shape(codec, codes, offline):
    assert offline.shape == (2, 1, T * codec.hop_length) and offline.dtype == torch.float32
    assert codec.hop_length == 320 and codec.n_codebooks == 8 and codec.name == "encodec:6"
    assert offline.std() > 0.1 * offline.abs().max()  # a real signal, so the exactness check means something


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_stream_equals_offline_fixed_chunks(codec, codes, offline, n):
    y, lens = stream(codec, codes, chunks(T, n))
    assert_close(y, offline)
    # after the 7-frame start-up every push returns exactly its frames' samples, and nothing is left
    done = 0
    for k, size in enumerate(chunks(T, n)):
        done += size
        if done - size >= 7:
            assert lens[k] == size * codec.hop_length
    assert lens[-1] == 0


def test_stream_equals_offline_random_partitions(codec, codes, offline):
    rng = np.random.default_rng(3)
    for _ in range(4):
        cuts = np.sort(rng.choice(np.arange(1, T), size=rng.integers(1, 8), replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [T]])).tolist()
        y, _ = stream(codec, codes, sizes)
        assert_close(y, offline)


@pytest.mark.parametrize("t", [1, 3, 6])
def test_short_streams_flush_the_rest(codec, codes, t):
    ref = codec.decode(codes[..., :t])
    y, lens = stream(codec, codes[..., :t], [1] * t)
    assert sum(lens[:-1]) == 0  # fewer than 7 frames: everything waits for flush
    assert_close(y, ref)


def test_other_bandwidth():
    torch.manual_seed(4)
    c = E.EncodecCodec(bandwidth=1.5, pretrained=False)
    assert c.n_codebooks == 2 and c.name == "encodec:1.5"
    codes = torch.randint(0, 1024, (1, 2, 20))
    ref = c.decode(codes)
    for sizes in ([1] * 20, [5, 2, 9, 4]):
        assert_close(stream(c, codes, sizes)[0], ref)


def test_reset_starts_a_new_stream(codec, codes, offline):
    dec = codec.stream_decoder()
    other = torch.flip(codes, dims=[-1])
    for i in range(9):  # leave state mid-stream in every layer
        dec.push(other[..., i:i + 1])
    dec.reset()
    y, _ = stream(codec, codes, chunks(T, 2), dec=dec)
    assert_close(y, offline)
    # flush ends the stream and leaves the decoder ready for the next one
    assert_close(stream(codec, codes, chunks(T, 4), dec=dec)[0], offline)


def test_batch_change_mid_stream_is_an_error(codec, codes):
    dec = codec.stream_decoder()
    dec.push(codes[:, :, :2])
    with pytest.raises(SpeechMTPError, match="batch size"):
        dec.push(codes[:1, :, 2:4])


def test_check_can_fail_tail_dropping_transposed_conv(codec, codes, offline, monkeypatch):
    """A transposed conv that forgets its overlap tail is only wrong at chunk borders: the check sees it."""
    real = S.CausalConvTranspose1d.step

    def drop_tail(self, x, final=False):
        self.tail = None
        return real(self, x, final)

    monkeypatch.setattr(S.CausalConvTranspose1d, "step", drop_tail)
    y, _ = stream(codec, codes, chunks(T, 2))
    with pytest.raises(AssertionError):
        assert_close(y, offline)
    monkeypatch.undo()
    assert_close(stream(codec, codes, chunks(T, 2))[0], offline)


def test_check_can_fail_naive_chunked_decode(codec, codes, offline):
    naive = torch.cat([codec.decode(codes[..., i:i + 7]) for i in range(0, T, 7)], dim=-1)
    with pytest.raises(AssertionError):
        assert_close(naive, offline)


def test_encode_shapes_and_resampling(codec):
    sr, n = 24000, 4800  # 0.2 s -> 15 frames
    t = torch.linspace(0, 0.2, n)
    wav = 0.3 * torch.sin(2 * torch.pi * 220 * t)
    codes = codec.encode(wav)
    assert codes.shape == (1, 8, 15) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 1024
    batch = codec.encode(torch.stack([wav, -wav])[:, None])  # (B=2, C=1, N)
    assert batch.shape == (2, 8, 15)
    assert torch.equal(batch[:1], codes)
    wav16 = 0.3 * np.sin(2 * np.pi * 220 * np.arange(3200) / 16000).astype(np.float32)  # 0.2 s at 16 kHz
    codes16 = codec.encode(wav16, sample_rate=16000)
    assert codes16.shape == (1, 8, 15)
    assert codec.decode(codes16).shape == (1, 1, 15 * 320)


def test_bad_bandwidth():
    with pytest.raises(SpeechMTPError, match="1.5, 3, 6, 12, 24"):
        E.EncodecCodec(bandwidth=5, pretrained=False)


# -- weights: local files only --------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(E.WEIGHTS_ENV, raising=False)
    return tmp_path


def test_missing_weights_error_names_file_places_and_source(no_weights):
    with pytest.raises(E.EncodecWeightsNotFound) as err:
        E.EncodecCodec()
    msg = str(err.value)
    assert E.WEIGHTS_FILE in msg and E.WEIGHTS_URL in msg and E.WEIGHTS_ENV in msg
    assert str(no_weights / "hub" / "checkpoints" / E.WEIGHTS_FILE) in msg
    missing = no_weights / "nowhere"
    with pytest.raises(SpeechMTPError, match="nowhere"):
        E.EncodecCodec(weights=str(missing))


def test_corrupt_weights_file(no_weights, monkeypatch):
    bad = no_weights / E.WEIGHTS_FILE
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SpeechMTPError, match="corrupt"):
        E.EncodecCodec(weights=str(bad))
    monkeypatch.setenv(E.WEIGHTS_ENV, str(no_weights))  # a folder holding the file, via the env var
    with pytest.raises(SpeechMTPError, match="corrupt"):
        E.EncodecCodec()
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(SpeechMTPError, match="does not match"):
        E.EncodecCodec(weights=str(bad))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A checkpoint in the official layout (weight-norm g/v, codebooks): a random model's state dict."""
    import warnings

    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = EncodecModel.encodec_model_24khz(pretrained=False)
    for layer in ref.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1.0)
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / E.WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    return ref, path


def test_weights_file_loads_and_folding_matches_the_package(weights_file, monkeypatch):
    """A local checkpoint loads from the hub cache, and our decode (weight norm folded) equals the
    package's own decode through its weight-norm hooks."""
    ref, path = weights_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(path.parent.parent))
    monkeypatch.delenv(E.WEIGHTS_ENV, raising=False)
    c = E.EncodecCodec(bandwidth=3.0)
    assert c.pretrained
    codes = torch.randint(0, 1024, (1, 4, 10))
    with torch.inference_mode():
        want = ref.decode([(codes, None)])
    assert_close(c.decode(codes), want)
    wav = 0.3 * torch.sin(torch.arange(3200) * 0.05)[None, None]  # (1, 1, N)
    ref.set_target_bandwidth(3.0)
    with torch.inference_mode():
        want_codes = ref.encode(wav)[0][0]
    got = c.encode(wav)
    assert got.shape == want_codes.shape == (1, 4, 10)
    assert (got == want_codes).float().mean() > 0.95  # folding may flip a near-tie, rarely


def test_roundtrip_cli(weights_file, tmp_path, capsys):
    from speechmtp.codec.roundtrip import main
    from speechmtp.utils import read_audio, write_audio

    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_audio(src, 0.3 * np.sin(2 * np.pi * 200 * np.arange(4000) / 16000), 16000)  # 0.25 s at 16 kHz
    rc = main([str(src), "-o", str(out), "--codec", "encodec:1.5", "--encodec-weights", str(weights_file[1]),
               "--stream-chunk", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(1, 2, 19)" in printed and "1.50 kbps" in printed and "max |stream - offline|" in printed
    wav, sr = read_audio(out)
    assert sr == 24000 and len(wav) == 6000


def test_bench_codec_report():
    from speechmtp.bench.codec import format_table, run_codec_bench

    threads = torch.get_num_threads()
    report = run_codec_bench(["encodec:1.5"], seconds=0.3, threads=1)
    assert torch.get_num_threads() == threads
    (r,) = report["results"]
    for key in ("decode_rtf", "encode_rtf", "stream_rtf", "stream_rtf_chunk4", "chunk_latency_ms_p50",
                "chunk_latency_ms_p95", "chunk4_latency_ms_p50", "stream_max_abs_diff", "sample_rate",
                "frame_rate", "n_codebooks", "weights"):
        assert key in r
    assert r["stream_max_abs_diff"] <= 1e-4 * r["offline_peak"]
    assert r["stream_first_audio_after_frames"] == 7 and r["n_codebooks"] == 2 and r["decoded_codes"] == "random"
    assert "encodec:1.5" in format_table(report) and report["machine"]["cores"] >= 1


# -- the generic streaming layers, against their offline torch equivalents ------------------------
def _feed(layer, x, sizes):
    outs, i = [], 0
    for n in sizes:
        outs.append(layer.step(x[..., i:i + n]))
        i += n
    outs.append(layer.step(x[..., :0], final=True))
    return torch.cat(outs, dim=-1)


def test_pad_left_matches_encodec_pad1d():
    from encodec.modules.conv import pad1d

    for n in (1, 3, 4, 5, 9):
        x = torch.randn(1, 2, n)
        for mode in ("reflect", "zero", "replicate"):
            assert torch.equal(S.pad_left(x, 4, mode), pad1d(x, (4, 0), mode="constant" if mode == "zero" else mode))


@pytest.mark.parametrize("mode", ["zero", "reflect", "replicate"])
def test_streaming_causal_conv_pad_modes(mode):
    conv = torch.nn.Conv1d(3, 4, kernel_size=3, dilation=2)
    x = torch.randn(2, 3, 23)
    with torch.no_grad():
        ref = conv(S.pad_left(x, 4, mode))
        for sizes in ([1] * 23, [2, 9, 12], [23]):
            y = _feed(S.CausalConv1d(conv, mode), x, sizes)
            assert_close(y, ref)
        short = x[..., :3]  # shorter than the padding: encodec's pad1d zero-extends before reflecting
        assert_close(_feed(S.CausalConv1d(conv, mode), short, [1, 1, 1]), conv(S.pad_left(short, 4, mode)))


def test_streaming_transposed_conv_and_lstm():
    convtr = torch.nn.ConvTranspose1d(3, 2, kernel_size=5, stride=2)  # kernel not a multiple of stride
    lstm = torch.nn.LSTM(3, 3, num_layers=2)
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        ref = convtr(x)[..., :80]  # offline trims kernel - stride samples on the right
        assert_close(_feed(S.CausalConvTranspose1d(convtr), x, [1, 3, 16, 20]), ref)
        ref = lstm(x.permute(2, 0, 1))[0].permute(1, 2, 0) + x
        for sizes in ([1] * 40, [20, 20], [40]):  # stepped cells and the fused module both
            assert_close(_feed(S.LSTM(lstm, skip=True), x, sizes), ref)
