"""The demos' audio paths, driven through the same callbacks PortAudio would call, with no hardware."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
import audio_io  # noqa: E402
from mic_loopback import LoopbackProcessor  # noqa: E402
from speak import play_stream  # noqa: E402


def drain(player, block=256, max_calls=1000):
    out = []
    for _ in range(max_calls):
        buf = np.full((block, 1), 9.0, dtype=np.float32)  # garbage the callback must overwrite
        player.callback(buf, block)
        out.append(buf[:, 0].copy())
        if player.drained.is_set():
            break
    return np.concatenate(out)


def test_player_plays_every_sample_in_order_after_prebuffer():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (37, 300, 1, 512, 90)]
    player = audio_io.JitterBufferPlayer(16000, prebuffer_s=0.02)  # 320 samples
    player.put(chunks[0])
    silent = drain(player, max_calls=3)  # below the prebuffer: silence, not an underrun
    assert np.all(silent == 0) and player.underruns == 0 and player.samples_played == 0
    for c in chunks[1:]:
        player.put(c)
    player.finish()
    out = drain(player)
    played = out[np.flatnonzero(out)[0]:][: sum(c.size for c in chunks)]
    np.testing.assert_array_equal(played, np.concatenate(chunks))
    assert player.samples_played == sum(c.size for c in chunks) and player.drained.is_set()


def test_player_counts_underruns_when_the_producer_is_late():
    player = audio_io.JitterBufferPlayer(16000, prebuffer_s=0.0)
    player.put(np.ones(100, dtype=np.float32))
    buf = np.zeros((256, 1), dtype=np.float32)
    player.callback(buf, 256)
    assert player.underruns == 1 and buf[:100, 0].sum() == 100 and np.all(buf[100:] == 0)


def test_recorder_slices_irregular_callbacks_into_exact_blocks():
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(5000).astype(np.float32)
    rec = audio_io.BlockRecorder(16000, block=320)
    pos = 0
    for n in (100, 1000, 7, 2000, 1893):
        rec.callback(signal[pos:pos + n, None], n)
        pos += n
    blocks = [b for _, b in rec.pop_all()]
    assert len(blocks) == 5000 // 320
    np.testing.assert_array_equal(np.concatenate(blocks), signal[: len(blocks) * 320])


def test_loopback_path_matches_offline_codec_round_trip():
    from speechmtp.codec.builtin import BuiltinCodec, tiny_config

    torch.manual_seed(0)
    codec = BuiltinCodec(tiny_config(), device="cpu").eval()
    hop = codec.hop_length
    frames = 2
    t = np.arange(24 * hop) / codec.sample_rate
    signal = (0.3 * np.sin(2 * np.pi * 220 * t) * np.linspace(0, 1, t.size)).astype(np.float32)
    # Context covers the whole signal, so each block's codes are the offline codes of that span.
    proc = LoopbackProcessor(codec, frames=frames, context_frames=24)
    out = np.concatenate([proc.process(signal[i:i + frames * hop]) for i in range(0, signal.size, frames * hop)])
    out = np.concatenate([out, proc.decoder.flush().reshape(-1).numpy()])
    with torch.inference_mode():
        ref = codec.decode(codec.encode(torch.from_numpy(signal)[None, None])).reshape(-1).numpy()
    assert proc.tokens == codec.n_codebooks * 24
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1e-3, np.abs(ref).max()))


def test_speak_feeds_engine_chunks_and_reports_first_audio():
    import time

    chunks = [np.full(160, 0.1, np.float32), np.full(480, -0.1, np.float32)]
    player = audio_io.JitterBufferPlayer(16000, prebuffer_s=0.0)
    ttfa = play_stream(iter(chunks), player, time.perf_counter())
    assert ttfa is not None and ttfa >= 0
    out = drain(player)
    np.testing.assert_array_equal(out[:640], np.concatenate(chunks))


def test_missing_sounddevice_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` raise ImportError
    with pytest.raises(audio_io.AudioUnavailable, match=r"pip install -e '\.\[demos\]'"):
        audio_io.import_sounddevice()
