"""The streaming engine on a tiny random voice: streaming == offline == a plain reference pipeline."""
import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from speechmtp import text as textmod
from speechmtp.engine import Engine, SentenceBuffer, SynthesisOptions, build_tiny_checkpoint
from speechmtp.generate import GenerationConfig, generate
from speechmtp.utils import SpeechMTPError

TEXT = "Hello there. How are you today? Fine, thanks."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("voice"))


@pytest.fixture(scope="module")
def engine(ckpt):
    eng = Engine.load(ckpt, device="cpu", max_batch=4)
    yield eng
    eng.close()


def opts(**kw):
    base = dict(temperature=0.9, seed=5, max_frames=24)
    base.update(kw)
    return SynthesisOptions(**base)


def reference(engine, text, o):
    """The obvious pipeline: generate() per sentence, concatenate all frames, decode once."""
    sb = SentenceBuffer(o.max_sentence_chars)
    sentences = sb.feed(text) + sb.flush()
    frames = []
    for i, s in enumerate(sentences):
        cfg = GenerationConfig(mode=o.mode, temperature=o.temperature, max_frames=o.max_frames, seed=o.seed + i)
        frames.append(generate(engine.model, textmod.encode(s), cfg).codes())
    codes = torch.cat(frames, dim=1)[None]  # (1, Q, T)
    return engine.codec.decode(codes).reshape(-1).numpy(), codes.shape[-1]


def test_offline_equals_stream_equals_reference(engine):
    o = opts()
    off = engine.synthesize(TEXT, o)
    t = engine.last_timings
    streamed = list(engine.stream(TEXT, o))
    assert len(streamed) > 2  # really streamed, in several chunks
    assert np.array_equal(off, np.concatenate(streamed))  # sample for sample
    ref, n_frames = reference(engine, TEXT, o)
    assert t["frames"] == n_frames and off.size == n_frames * engine.codec.hop_length
    assert np.allclose(off, ref, atol=1e-5)
    assert t["sentences"] == 3 and t["ttfa_ms"] > 0 and t["rtf"] > 0 and t["accepted_per_step"] >= 1


def test_first_chunk_is_small(engine):
    hop = engine.codec.hop_length
    chunks = list(engine.stream(TEXT, opts(first_chunk_frames=2, chunk_frames=8, mode="ntp")))
    assert chunks[0].size == 2 * hop  # ntp: one frame a step, so the first chunk is exactly 2 frames
    chunks = list(engine.stream(TEXT, opts(first_chunk_frames=2, chunk_frames=8)))
    assert 2 * hop <= chunks[0].size < 8 * hop  # mtp may hand over a few frames at once
    assert max(c.size for c in chunks) >= 8 * hop


def test_seed_controls_sampling(engine):
    a = engine.synthesize(TEXT, opts(seed=1))
    b = engine.synthesize(TEXT, opts(seed=1))
    c = engine.synthesize(TEXT, opts(seed=2))
    assert np.array_equal(a, b)
    assert a.size != c.size or not np.array_equal(a, c)


def test_async_stream_matches_and_does_not_block_the_loop(engine):
    o = opts(max_frames=60)
    off = engine.synthesize(TEXT, o)

    async def main():
        ticks = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        chunks = [c async for c in engine.astream(TEXT, o)]
        stop = True
        await t
        return chunks, ticks

    chunks, ticks = asyncio.run(main())
    assert np.array_equal(np.concatenate(chunks), off)
    assert ticks >= 5  # the loop kept running while the model worked on another thread


def test_incremental_text_flush_and_end(engine):
    o = opts()
    s = engine.open_session(o)
    for piece in ["Hello th", "ere. How are", " you today? Fine, ", "thanks."]:
        s.push_text(piece)
    s.end()
    evs = list(s.events(timeout=60))
    audio = np.concatenate([e.audio for e in evs if e.kind == "audio"])
    assert np.array_equal(audio, engine.synthesize(TEXT, o))  # same sentences, same seeds, same samples
    assert evs[-1].kind == "done" and evs[-1].data["cancelled"] is False

    s = engine.open_session(o)
    s.push_text("No full stop yet")
    s.flush()
    kinds = []
    for e in s.events(timeout=60):
        kinds.append(e.kind)
        if e.kind == "flushed":
            break
    assert kinds[-1] == "flushed" and "audio" in kinds  # the buffer was spoken before "flushed"
    s.push_text("More.")
    s.end()
    rest = [e.kind for e in s.events(timeout=60)]
    assert "audio" in rest and rest[-1] == "done"


def test_cancel_frees_the_slot_at_once(engine):
    s = engine.open_session(opts(max_frames=1000, chunk_frames=2))
    s.push_text("A long sentence that would run for a while. " * 3)
    it = s.events(timeout=60)
    first = next(it)
    assert first.kind == "audio"
    s.cancel()
    last = list(it)[-1]
    assert last.kind == "done" and last.data["cancelled"] is True
    deadline = time.time() + 5
    while (engine.active_slots or engine.open_sessions) and time.time() < deadline:
        time.sleep(0.01)
    assert engine.active_slots == 0 and engine.open_sessions == 0


def test_concurrent_sessions_are_batched_and_complete(engine):
    texts = [f"Session number {i} says hello. And goodbye." for i in range(6)]  # more than max_batch=4
    results = [None] * len(texts)

    def run(i):
        results[i] = engine.synthesize(texts[i], opts(seed=i, max_frames=20))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r.size > 0 for r in results)
    solo = engine.synthesize(texts[3], opts(seed=3, max_frames=20))
    assert solo.size == results[3].size and np.allclose(solo, results[3], atol=1e-4)
    assert engine.active_slots == 0


def test_bad_text_is_a_clear_error(engine):
    with pytest.raises(SpeechMTPError, match="empty"):
        engine.synthesize("   ", opts())
    s = engine.open_session(opts())
    s.push_text("\U0001F600\U0001F600")  # nothing speakable: skipped with a non-fatal error
    s.flush()
    s.push_text("Then words.")
    s.end()
    evs = list(s.events(timeout=60))
    assert evs[0].kind == "error" and evs[0].data["code"] == "unspeakable_text"
    assert any(e.kind == "audio" for e in evs) and evs[-1].kind == "done"
    with pytest.raises(SpeechMTPError, match="mode"):
        SynthesisOptions(mode="fast")


def test_load_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(SpeechMTPError, match="not found.*checkpoints"):
        Engine.load("no-such-voice-here")
    with pytest.raises(SpeechMTPError, match="not found"):
        Engine.load(tmp_path / "nothing-here")


def test_say_command_writes_the_engine_audio(ckpt, engine, tmp_path, capsys):
    import soundfile as sf

    from speechmtp import say
    from speechmtp.audio_format import float_to_pcm16

    out = tmp_path / "say.wav"
    assert say.main([TEXT, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--seed", "5",
                     "--temperature", "0.9", "--max-frames", "24"]) == 0
    wav, sr = sf.read(out, dtype="int16")
    assert sr == engine.sample_rate
    assert np.array_equal(wav, float_to_pcm16(engine.synthesize(TEXT, opts())))
    assert "time to first audio" in capsys.readouterr().err
    script = tmp_path / "bad.txt"
    script.write_bytes(b"\xff\xfe not utf-8")
    for argv, msg in [(["  ", "-o", str(out)], "empty"), (["-f", str(tmp_path / "none.txt"), "-o", str(out)], "not found"),
                      (["-f", str(script), "-o", str(out)], "not UTF-8"), (["x" * 100_001, "-o", str(out)], "limit"),
                      (["hi"], "nothing to do"), (["Привет мир", "-o", str(out)], "cannot read"),
                      (["\U0001F600 ...", "-o", str(out)], "nothing speakable"),
                      (["hi", "-o", str(out), "--temperature", "-1"], "temperature must"),
                      (["hi", "-o", str(out), "--top-p", "0"], "top_p must"),
                      (["hi", "-o", str(out), "--top-k", "-2"], "top_k must")]:
        with pytest.raises(SpeechMTPError, match=msg):
            say.main(argv + ["--checkpoint", str(ckpt)])


def test_settings_the_voice_cannot_honour_fail_at_open(tmp_path):
    eng = Engine.load(build_tiny_checkpoint(tmp_path / "ntp-only", mtp_heads=0), device="cpu")
    try:
        with pytest.raises(SpeechMTPError, match="MTP heads"):
            eng.open_session(SynthesisOptions(mode="mtp"))
        out = eng.synthesize("Plain decoding still works.", SynthesisOptions(mode="ntp", max_frames=8))
        assert out.size == eng.last_timings["frames"] * eng.codec.hop_length > 0
        assert eng.last_timings["accepted_per_step"] == 1.0  # ntp: one grid step per forward pass
    finally:
        eng.close()


def test_default_frame_cap_follows_sentence_length(engine):
    """With no max_frames, a sentence is capped at 1 s + max_seconds_per_char per token: a voice that
    misses its end token stops there, exactly as if that cap had been given explicitly."""
    text = "Hi."
    per_char = 0.0  # cap = 1 s = 50 frames; this voice runs ~58 frames on its own
    cap = int(engine.codec.frame_rate * (1.0 + per_char * len(textmod.encode(text))))
    capped = engine.synthesize(text, opts(max_frames=None, max_seconds_per_char=per_char))
    explicit = engine.synthesize(text, opts(max_frames=cap))
    longer = engine.synthesize(text, opts(max_frames=cap + 40))
    assert longer.size > explicit.size, "the tiny voice should run past the cap for this test to mean anything"
    np.testing.assert_array_equal(capped, explicit)


def test_voice_json_sets_the_voice_defaults(tmp_path, capsys):
    """A checkpoint's voice.json picks its default decode settings; explicit options still win; a broken
    file is a clear error; without one the built-in defaults apply."""
    import json

    from speechmtp import say

    ckpt = build_tiny_checkpoint(tmp_path / "v")
    eng = Engine.load(ckpt, device="cpu")
    try:
        assert eng.options().mode == "mtp" and eng.options().temperature is None
    finally:
        eng.close()
    (ckpt / "voice.json").write_text(json.dumps({"mode": "ntp", "temperature": 0.5, "top_k": 20,
                                                 "measured": {"note": "ignored"}}))
    eng = Engine.load(ckpt, device="cpu")
    try:
        o = eng.options()
        assert (o.mode, o.temperature, o.top_k) == ("ntp", 0.5, 20)
        assert eng.options(mode="mtp").mode == "mtp" and eng.options(mode="mtp").temperature == 0.5
        eng.synthesize("Hi there.", eng.options(seed=0))
        assert eng.last_timings["mode"] == "ntp" and eng.last_timings["accepted_per_step"] == 1.0
    finally:
        eng.close()
    say.main(["Hi there.", "-o", str(tmp_path / "a.wav"), "--checkpoint", str(ckpt), "--stats", "--seed", "1"])
    assert json.loads(capsys.readouterr().out)["mode"] == "ntp"
    for bad in ('{"mode": "fast"}', "[1, 2]", "{not json", '{"temperature": -1}'):
        (ckpt / "voice.json").write_text(bad)
        with pytest.raises(SpeechMTPError, match="voice.json"):
            Engine.load(ckpt, device="cpu")
