"""Bad input through the shared Codec checks gives a SpeechMTPError naming the problem, not a torch traceback."""
import numpy as np
import pytest
import torch

from speechmtp.codec import load_codec
from speechmtp.codec.encodec import EncodecCodec
from speechmtp.utils import SpeechMTPError


@pytest.fixture(scope="module")
def codec():
    return EncodecCodec(bandwidth=1.5, pretrained=False)


@pytest.mark.parametrize("wav, match", [
    (torch.zeros(0), "empty"),
    (torch.zeros(1, 1, 1, 320), "shape"),
    (torch.tensor([0.0, float("nan"), 0.0]), "NaN"),
    (torch.tensor([0.0, float("inf")]), "infinite"),
    (np.array(["a", "b"]), "numeric"),
    (np.zeros(4, dtype=np.complex64), "real-valued"),
    ([0.0, 0.1], "torch.Tensor or numpy"),
])
def test_bad_audio(codec, wav, match):
    with pytest.raises(SpeechMTPError, match=match):
        codec.encode(wav)


def test_bad_sample_rate(codec):
    with pytest.raises(SpeechMTPError, match="sample rate"):
        codec.encode(torch.zeros(320), sample_rate=0)


def test_integer_pcm_is_scaled(codec):
    """int16 PCM and the same audio as float in [-1, 1] give the same codes (two ways to one signal)."""
    t = np.arange(2400) / 24000
    pcm = (0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32767
    assert torch.equal(codec.encode(pcm), codec.encode(as_float))
    assert not torch.equal(codec.encode(pcm), codec.encode(pcm.astype(np.float32)))  # unscaled would differ


def test_stereo_is_mixed_to_mono(codec):
    x = torch.randn(2400) * 0.1
    assert torch.equal(codec.encode(torch.stack([x, x])), codec.encode(x))


@pytest.mark.parametrize("codes, match", [
    (torch.full((1, 2, 3), 1024), r"\[0, 1024\)"),
    (torch.full((1, 2, 3), -1), r"\[0, 1024\)"),
    (torch.zeros(1, 2, 3), "integers"),
    (torch.zeros(1, 3, 3, dtype=torch.long), r"\(B, 2, T\)"),
    (torch.zeros(2, 3, dtype=torch.long), r"\(B, 2, T\)"),
    (np.zeros((1, 2, 3), dtype=np.int64), "torch.Tensor"),
])
def test_bad_codes(codec, codes, match):
    with pytest.raises(SpeechMTPError, match=match):
        codec.decode(codes)
    with pytest.raises(SpeechMTPError, match=match):
        codec.stream_decoder().push(codes)


def test_int32_codes_are_accepted(codec):
    codes = torch.randint(0, 1024, (1, 2, 3))
    assert torch.equal(codec.decode(codes.int()), codec.decode(codes))


def test_load_codec_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpeechMTPError, match="looked for a folder") as err:
        load_codec("no-such-codec")
    assert str(tmp_path / "no-such-codec") in str(err.value) and "codecs" in str(err.value)
    with pytest.raises(SpeechMTPError, match="looked for a folder"):
        load_codec(str(tmp_path / "absent"))


def test_load_codec_folder_without_config(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(SpeechMTPError, match="no config.json"):
        load_codec(str(tmp_path / "c"))


def test_load_codec_bad_specs():
    with pytest.raises(SpeechMTPError, match="bandwidth"):
        load_codec("encodec:fast")
    with pytest.raises(SpeechMTPError, match="1.5, 3, 6, 12, 24"):
        load_codec("encodec:7")
    with pytest.raises(SpeechMTPError, match="non-empty"):
        load_codec("")


def test_load_codec_encodec_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("SPEECHMTP_ENCODEC_WEIGHTS", raising=False)
    with pytest.raises(SpeechMTPError, match="encodec_24khz-d7cc33bc.th"):
        load_codec("encodec:6")


def test_load_codec_builtin_folder_by_path_and_relative(tmp_path, monkeypatch):
    builtin = pytest.importorskip("speechmtp.codec.builtin")
    saved = builtin.BuiltinCodec(builtin.tiny_config())
    saved.save(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    codes = torch.randint(0, saved.codebook_size, (1, saved.n_codebooks, 5))
    for spec in (str(tmp_path / "mine"), "mine"):
        loaded = load_codec(spec, device="cpu")
        assert type(loaded) is builtin.BuiltinCodec
        assert torch.equal(loaded.decode(codes), saved.decode(codes))
