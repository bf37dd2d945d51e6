"""Corpus readers, bad-item accounting, the token cache (reuse, keying, resume) and batching."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechmtp import data
from speechmtp.codec.base import Codec, StreamDecoder
from speechmtp.text import PAD, encode as text_encode
from speechmtp.utils import SpeechMTPError


class FakeCodec(Codec):
    """Deterministic toy codec: per-frame energy and zero-crossing bins; counts encode calls."""

    def __init__(self, levels: int = 16, fail_after: int | None = None):
        self.name, self.sample_rate, self.frame_rate = "fake", 8000, 100.0
        self.n_codebooks, self.codebook_size, self.levels = 2, 16, levels
        self.device = torch.device("cpu")
        self.calls, self._fail_after = 0, fail_after

    def encode(self, wav, sample_rate=None):
        if self._fail_after is not None and self.calls >= self._fail_after:
            raise KeyboardInterrupt  # a user's Ctrl-C in the middle of a long encode
        self.calls += 1
        w = self._prepare_wav(wav, sample_rate)[:, 0]  # (B, N)
        t = w.shape[-1] // self.hop_length
        fr = w[:, :t * self.hop_length].reshape(w.shape[0], t, self.hop_length)
        energy = (fr.abs().mean(-1) * self.levels * 4).long().clamp(0, self.codebook_size - 1)
        zc = ((fr[..., 1:] * fr[..., :-1]) < 0).sum(-1).clamp(0, self.codebook_size - 1)
        return torch.stack([energy, zc], dim=1)  # (B, Q, T)

    def decode(self, codes):
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * self.hop_length)

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError


def tone(path: Path, seconds: float, freq: float = 220.0, sr: int = 16000, channels: int = 1) -> None:
    t = np.arange(int(seconds * sr)) / sr
    w = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([w] * channels, 1) if channels > 1 else w, sr)


TEXTS = ["Hello there.", "A quick test.", "Sine waves sing.", "Number five.", "Good night!", "One more line."]


def make_pairs(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tone(root / f"clip{i}.wav", 0.2 + 0.05 * i, 200 + 40 * i, sr=[16000, 22050, 8000][i % 3], channels=1 + i % 2)
        (root / f"clip{i}.txt").write_text(TEXTS[i % len(TEXTS)])
    return root


def test_ljspeech_reader_prefers_normalized_text_and_matches_pairs(tmp_path):
    lj = tmp_path / "lj"
    (lj / "wavs").mkdir(parents=True)
    rows = []
    for i in range(3):
        tone(lj / "wavs" / f"LJ{i}.wav", 0.3, 300 + 50 * i, sr=22050)
        rows.append(f"LJ{i}|Dr. No {i}|Doctor No {['zero', 'one', 'two'][i]}")
    (lj / "metadata.csv").write_text("\n".join(rows) + "\n")
    scan = data.scan_corpus(lj)
    assert scan.layout == "ljspeech" and [it.text for it in scan.items][1] == "Doctor No one"
    # same clips in the pairs layout give the same codes (two readers, one encoder)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i in range(3):
        (pairs / f"LJ{i}.wav").write_bytes((lj / "wavs" / f"LJ{i}.wav").read_bytes())
        (pairs / f"LJ{i}.txt").write_text(f"Doctor No {['zero', 'one', 'two'][i]}")
    a = data.encode_corpus(lj, FakeCodec(), progress=False)
    b = data.encode_corpus(pairs, FakeCodec(), progress=False)
    assert data.scan_corpus(pairs).layout == "pairs"
    assert [x.id for x in a.items] == [x.id for x in b.items]
    for x, y in zip(a.items, b.items):
        assert x.text == y.text and torch.equal(x.codes, y.codes)


def test_jsonl_relative_and_absolute_paths(tmp_path):
    root = make_pairs(tmp_path / "c", 3)
    (tmp_path / "c" / "sub").mkdir()
    sub_manifest = tmp_path / "c" / "sub" / "m.jsonl"
    lines = [{"audio": "../clip0.wav", "text": "Hello there."},
             {"audio": str(root / "clip1.wav"), "text": "A quick test."},
             {"audio": "../clip2.wav", "text": "Sine waves sing.", "id": "third"}]
    sub_manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    scan = data.scan_corpus(sub_manifest)
    assert scan.layout == "jsonl" and len(scan.items) == 3 and scan.skipped == {data.BAD_LINE: 1}
    assert scan.items[2].id == "third" and scan.root == sub_manifest.parent
    # a folder holding exactly one manifest is detected as that manifest
    assert data.scan_corpus(tmp_path / "c" / "sub").layout == "jsonl"
    # `data synth` layout: manifest.jsonl is the training manifest, heldout.jsonl is not
    (tmp_path / "c" / "sub" / "heldout.jsonl").write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(SpeechMTPError, match="several manifests"):
        data.scan_corpus(tmp_path / "c" / "sub")
    (tmp_path / "c" / "sub" / "manifest.jsonl").write_text(json.dumps(lines[1]) + "\n")
    assert [it.text for it in data.scan_corpus(tmp_path / "c" / "sub").items] == ["A quick test."]
    corpus = data.encode_corpus(sub_manifest, FakeCodec(), progress=False, verbose=False)
    direct = FakeCodec().encode(sf.read(str(root / "clip1.wav"), dtype="float32")[0].T, 22050)[0]  # stereo (C, N)
    assert torch.equal(corpus.items[1].codes.long(), direct)  # cache round trip == codec on the raw file


def test_bad_items_are_skipped_and_counted(tmp_path, capsys):
    root = make_pairs(tmp_path / "c", 3)
    (root / "broken.wav").write_bytes(b"RIFF not really a wav")
    (root / "broken.txt").write_text("Broken file.")
    sf.write(str(root / "silent.wav"), np.zeros(0, dtype=np.float32), 16000)
    (root / "silent.txt").write_text("Nothing here.")
    tone(root / "notext.wav", 0.2)
    (root / "emptytext.txt").write_text("   ")
    tone(root / "emptytext.wav", 0.2)
    (root / "noaudio.txt").write_text("Where is my audio?")
    tone(root / "long.wav", 3.0)
    (root / "long.txt").write_text("Too long a clip.")
    tone(root / "wordy.wav", 0.2)
    (root / "wordy.txt").write_text("word " * 50)
    tone(root / "symbols.wav", 0.2)
    (root / "symbols.txt").write_text("\u4f60\u597d \u2603")
    corpus = data.encode_corpus(root, FakeCodec(), max_seconds=2.0, max_text_chars=100, progress=False)
    assert sorted(x.id for x in corpus.items) == ["clip0", "clip1", "clip2"]
    assert corpus.skipped == {data.UNREADABLE: 1, data.EMPTY_AUDIO: 1, data.NO_TEXT: 1, data.EMPTY_TEXT: 1,
                              data.NO_AUDIO: 1, data.LONG_AUDIO: 1, data.LONG_TEXT: 1, data.UNSPEAKABLE: 1}
    err = capsys.readouterr().err
    assert "skipped 8 items" in err and "unreadable audio" in err


def test_cache_reused_and_keyed_by_codec_settings(tmp_path):
    root = make_pairs(tmp_path / "c")
    c1 = FakeCodec()
    first = data.encode_corpus(root, c1, progress=False, verbose=False)
    assert c1.calls == 6 and first.n_encoded == 6
    c2 = FakeCodec()
    second = data.encode_corpus(root, c2, progress=False, verbose=False)
    assert c2.calls == 0 and second.n_cached == 6
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(first.items, second.items))
    c3 = FakeCodec(levels=8)  # a different setting -> a different cache, fresh codes
    assert data.cache_key(c3) != data.cache_key(c1)
    third = data.encode_corpus(root, c3, progress=False, verbose=False)
    assert c3.calls == 6 and third.cache_dir != first.cache_dir
    # a changed audio file is re-encoded, the rest reused
    tone(root / "clip0.wav", 0.5, 500)
    c4 = FakeCodec()
    data.encode_corpus(root, c4, progress=False, verbose=False)
    assert c4.calls == 1
    # weights are part of the key even when every setting is equal
    class WeightCodec(FakeCodec):
        def __init__(self, w):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)
            torch.nn.init.constant_(self.net.weight, w)
            torch.nn.init.zeros_(self.net.bias)
    assert data.cache_key(WeightCodec(0.1)) != data.cache_key(WeightCodec(0.2))
    assert data.cache_key(WeightCodec(0.1)) == data.cache_key(WeightCodec(0.1))


def test_encode_resumes_after_interruption(tmp_path):
    root = make_pairs(tmp_path / "c")
    crashing = FakeCodec(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        data.encode_corpus(root, crashing, cache_dir=tmp_path / "cache", shard_items=2, progress=False)
    idx = json.loads(next((tmp_path / "cache").glob("*/index.json")).read_text())
    assert len(idx["entries"]) == 3  # two in a full shard, the third flushed on the way out
    c = FakeCodec()
    corpus = data.encode_corpus(root, c, cache_dir=tmp_path / "cache", shard_items=2, progress=False, verbose=False)
    assert c.calls == 3 and len(corpus.items) == 6
    fresh = data.encode_corpus(root, FakeCodec(), cache_dir=tmp_path / "other", progress=False, verbose=False)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(corpus.items, fresh.items))


def test_split_collate_and_batches(tmp_path):
    corpus = data.encode_corpus(make_pairs(tmp_path / "c"), FakeCodec(), progress=False, verbose=False)
    tr, va = data.split_train_val(corpus.items, 0.2)
    tr2, va2 = data.split_train_val(list(reversed(corpus.items)), 0.2)
    assert len(va) >= 1 and {x.id for x in va} == {x.id for x in va2} and len(tr) + len(va) == 6
    ds = data.TokenDataset(corpus.items)
    batch = data.collate([ds[0], ds[3]])
    assert batch["codes"].shape == (2, 2, int(batch["code_len"].max()))
    for j, i in enumerate([0, 3]):
        n, L = int(batch["code_len"][j]), int(batch["text_len"][j])
        assert torch.equal(batch["codes"][j, :, :n], corpus.items[i].codes.long())
        assert batch["text"][j, :L].tolist() == text_encode(corpus.items[i].text)
        assert (batch["text"][j, L:] == PAD).all()
    lengths = ds.lengths()
    b1 = data.epoch_batches(lengths, 2, seed=1, epoch=0)
    assert b1 == data.epoch_batches(lengths, 2, seed=1, epoch=0)
    assert sorted(i for b in b1 for i in b) == list(range(6))
    assert b1 != data.epoch_batches(lengths, 2, seed=1, epoch=1) or b1 != data.epoch_batches(lengths, 2, seed=2, epoch=0)
    with pytest.raises(SpeechMTPError, match="batch-size"):
        data.epoch_batches(lengths, 7, 0, 0)


def test_missing_path_and_empty_folder_errors(tmp_path):
    with pytest.raises(SpeechMTPError, match="does not exist"):
        data.scan_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechMTPError, match="no corpus found"):
        data.scan_corpus(tmp_path / "empty")


def test_cache_key_of_real_codecs():
    from speechmtp.codec.encodec import EncodecCodec

    def enc(bw):
        torch.manual_seed(0)  # random init: equal seeds give equal weights
        return EncodecCodec(bandwidth=bw, device="cpu", pretrained=False)
    assert data.cache_key(enc(6.0)) == data.cache_key(enc(6.0))
    assert data.cache_key(enc(6.0)) != data.cache_key(enc(12.0))
    assert data.cache_key(enc(6.0)).startswith("encodec_6-")
