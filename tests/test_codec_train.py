"""`speechmtp codec train` on a few synthetic clips: the loss falls, checkpoints load, resume is exact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechmtp.codec import train as codec_train
from speechmtp.codec.builtin import BuiltinCodec, tiny_config
from speechmtp.utils import SpeechMTPError, load_safetensors

torch.set_num_threads(1)

TINY = json.dumps({k: v for k, v in tiny_config().__dict__.items() if k != "kind"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 1 s clips (a 16 kHz chirp, 22.05 kHz stereo tones, noise bursts), an unreadable file, a manifest."""
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    sf.write(d / "chirp.wav", 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t), 16000)
    t2 = np.arange(22050) / 22050
    tones = np.stack([0.3 * np.sin(2 * np.pi * 330 * t2), 0.2 * np.sin(2 * np.pi * 550 * t2)], 1)
    (d / "sub").mkdir()
    sf.write(d / "sub" / "tones.flac", tones, 22050)
    bursts = rng.normal(0, 0.2, 16000) * (np.sin(2 * np.pi * 3 * t) > 0.3)
    sf.write(d / "bursts.wav", bursts, 16000)
    (d / "broken.wav").write_bytes(b"RIFF not really a wav")
    lines = [{"audio": "chirp.wav", "text": "a"}, {"audio": "sub/tones.flac", "text": "b"},
             {"audio": "bursts.wav", "text": "c"}]
    (d / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


def run(data, out, *extra):
    argv = ["--data", str(data), "--out", str(out), "--batch-size", "4", "--segment-seconds", "0.4",
            "--lr", "3e-3", "--warmup", "2", "--val-every", "10", "--save-every", "10", "--threads", "1",
            "--quiet", "--config-json", TINY, *extra]
    return codec_train.main(argv)


def losses(out) -> list[float]:
    return torch.load(out / codec_train.STATE_FILE, weights_only=False)["info"]["losses"]


def test_data_listing_and_skips(data, tmp_path):
    assert len(codec_train.list_audio(data)) == 4  # recursive, .wav and .flac, the broken one included
    assert len(codec_train.list_audio(data / "manifest.jsonl")) == 3
    clips, skipped = codec_train.load_clips(codec_train.list_audio(data), 16000, cache=tmp_path / "c.npz", quiet=True)
    assert skipped == 1 and len(clips) == 3 and all(c.dtype == np.int16 for c in clips)
    again, _ = codec_train.load_clips(codec_train.list_audio(data), 16000, cache=tmp_path / "c.npz", quiet=True)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))  # served from the cache
    with pytest.raises(SpeechMTPError, match="does not exist"):
        codec_train.list_audio(tmp_path / "missing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no audio key"}\n')
    with pytest.raises(SpeechMTPError, match="line 1"):
        codec_train.list_audio(bad)


def test_loss_falls_checkpoint_loads_and_resume_is_exact(data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run(data, full, "--steps", "24") == 0
    hist = losses(full)
    assert len(hist) == 24
    assert np.mean(hist[-5:]) < 0.85 * np.mean(hist[:5])

    # an atomic checkpoint: every file complete, no temporaries left, loads as a codec
    assert not list(full.glob(".*.tmp"))
    codec = BuiltinCodec.load(full, device="cpu")
    assert codec.encode(np.zeros(3200, dtype=np.float32)).shape == (1, codec.n_codebooks, 10)
    card = (full / "README.md").read_text()
    assert "kbps" in card and "latency" in card and "SI-SNR" in card

    # the same run cut at step 12 and resumed: same weights as the uninterrupted one
    assert run(data, split, "--steps", "24", "--stop-at", "12") == 0
    assert torch.load(split / codec_train.STATE_FILE, weights_only=False)["step"] == 12
    assert run(data, split, "--steps", "24", "--resume") == 0
    a, b = load_safetensors(full / "model.safetensors"), load_safetensors(split / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert losses(split) == hist


def test_manifest_and_user_errors(data, tmp_path):
    out = tmp_path / "m"
    assert run(data / "manifest.jsonl", out, "--steps", "2") == 0
    assert (out / "config.json").is_file()
    with pytest.raises(SpeechMTPError, match="no train_state.pt"):
        run(data, tmp_path / "fresh", "--steps", "2", "--resume")
    with pytest.raises(SpeechMTPError, match="unknown keys"):
        codec_train.main(["--data", str(data), "--out", str(tmp_path / "x"), "--config-json", '{"nope": 1}'])


def test_interrupt_saves_a_checkpoint(data, tmp_path, monkeypatch):
    out = tmp_path / "intr"
    real, calls = codec_train.sample_batch, []

    def interrupted(*a, **k):  # 4 calls for the codebook init, then the 6th training batch is "Ctrl-C"
        calls.append(1)
        if len(calls) == 4 + 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(codec_train, "sample_batch", interrupted)
    assert run(data, out, "--steps", "20") == 130
    assert torch.load(out / codec_train.STATE_FILE, weights_only=False)["step"] == 5
    monkeypatch.setattr(codec_train, "sample_batch", real)
    assert run(data, out, "--steps", "7", "--resume") == 0
    assert torch.load(out / codec_train.STATE_FILE, weights_only=False)["step"] == 7


def test_decoder_fine_tune_keeps_the_codes(data, tmp_path):
    """--decoder-from trains only the decoder: the codes, the token-cache key and the encoder/codebook
    weights are bit-identical to the base codec's, while the decoder's weights (and the loss) move."""
    from speechmtp.data import cache_key

    base, ft = tmp_path / "base", tmp_path / "ft"
    assert run(data, base, "--steps", "12") == 0
    assert run(data, ft, "--steps", "12", "--decoder-from", str(base), "--lr", "1e-2") == 0
    a, b = BuiltinCodec.load(base, device="cpu"), BuiltinCodec.load(ft, device="cpu")
    wa, wb = a.state_dict(), b.state_dict()
    for k in wa:
        if not k.startswith("decoder."):
            assert torch.equal(wa[k], wb[k]), k
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if k.startswith("decoder."))
    wav = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, 8000).astype(np.float32))
    assert torch.equal(a.encode(wav), b.encode(wav))
    assert cache_key(a) == cache_key(b)
    assert not torch.equal(a.decode(a.encode(wav)), b.decode(b.encode(wav)))
    assert "decoder fine-tuned" in (ft / "README.md").read_text()
    # resume keeps it decoder-only
    assert run(data, ft, "--steps", "16", "--resume") == 0
    c = BuiltinCodec.load(ft, device="cpu").state_dict()
    assert all(torch.equal(wa[k], c[k]) for k in wa if not k.startswith("decoder."))
