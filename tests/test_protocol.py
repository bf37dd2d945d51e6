"""The protocol state machine and the wire audio formats, without sockets or models."""
import json

import numpy as np
import pytest

from speechmtp.audio_format import (AudioEncoder, StreamResampler, check_format, decode_bytes, float_to_pcm16,
                                    mulaw_to_pcm16, pcm16_to_mulaw)
from speechmtp.engine import SentenceBuffer
from speechmtp.protocol import (ERRORS, Cancel, Configure, End, Flush, Limits, ProtocolError, SessionProtocol, Text,
                                check_header_key, parse_config)
from speechmtp.utils import SpeechMTPError

VOICES = {"default": 16000, "other": 24000}


def proto(**kw):
    return SessionProtocol(Limits(max_text_chars=kw.pop("max_text_chars", 100)), VOICES, "default", **kw)


def cfg(**kw):
    return json.dumps({"type": "config", **kw})


def configured(**kw):
    p = proto(**kw)
    assert isinstance(p.receive(cfg()), Configure)
    return p


def err(p, raw) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        p.receive(raw)
    return e.value


# -- session state machine ------------------------------------------------------------------------
def test_happy_path_commands_in_order():
    p = proto()
    c = p.receive(cfg(voice="other", mode="ntp", temperature=0.5, top_k=10, top_p=0.9, seed=7, audio_events=True))
    assert c.config.voice == "other" and c.config.sample_rate == 24000 and c.config.seed == 7
    assert p.receive('{"type":"text","text":"Hello."}') == Text("Hello.")
    assert p.receive('{"type":"text","text":"Hi","flush":true}') == Text("Hi", flush=True)
    assert isinstance(p.receive('{"type":"flush"}'), Flush)
    assert isinstance(p.receive('{"type":"end"}'), End)
    assert p.state == "ending"
    assert err(p, '{"type":"text","text":"late"}').code == "session_ended"  # not fatal
    assert isinstance(p.receive('{"type":"cancel"}'), Cancel)


@pytest.mark.parametrize("raw,code,close", [
    (b"\x00\x01", "binary_not_supported", 1003),
    ("{not json", "invalid_json", 1007),
    ("[1]", "not_configured", 1008),  # before config everything but a valid config is fatal
    ('{"type":"text","text":"hi"}', "not_configured", 1008),
    (cfg(voice="nope"), "unknown_voice", 1008),
    (cfg(mode="fast"), "invalid_config", 1008),
    (cfg(temperature="hot"), "invalid_config", 1008),
    (cfg(top_k=True), "invalid_config", 1008),  # bool is not an int here
    (cfg(seed=-1), "invalid_config", 1008),
    (cfg(sample_rate=44100), "invalid_config", 1008),
    (cfg(format="mulaw", sample_rate=16000), "invalid_config", 1008),
    (cfg(tempreature=1), "invalid_config", 1008),  # a typo is reported, not ignored
])
def test_bad_first_messages_are_fatal(raw, code, close):
    p = proto()
    e = err(p, raw)
    assert (e.code, e.fatal, e.close_code) == (code, True, close)
    assert p.state == "closed"


def test_bad_messages_after_config():
    p = configured()
    e = err(p, "{oops")
    assert (e.code, e.fatal, e.close_code) == ("invalid_json", True, 1007)
    for raw, code in [('{"type":"speak"}', "unknown_type"), ('{"type":"text","text":5}', "invalid_field"),
                      ('{"type":"text","text":"  "}', "empty_text"), ('[1,2]', "invalid_message"),
                      ('{"type":"text","text":"a","flush":"yes"}', "invalid_field"), (cfg(), "already_configured")]:
        p = configured()
        e = err(p, raw)
        assert (e.code, e.fatal) == (code, False), raw
        assert p.state == "streaming"  # the session goes on
        assert p.receive('{"type":"text","text":"still fine."}') == Text("still fine.")


def test_text_limit_is_per_session():
    p = configured(max_text_chars=10)
    p.receive('{"type":"text","text":"12345"}')
    p.receive('{"type":"text","text":"67890"}')
    e = err(p, '{"type":"text","text":"x"}')
    assert (e.code, e.close_code) == ("text_limit", 1008)


def test_api_key_in_config_or_header():
    p = proto(api_key="s3cret")
    assert err(p, cfg(api_key="wrong")).code == "unauthorized"
    assert err(proto(api_key="s3cret"), cfg()).close_code == 1008
    assert isinstance(proto(api_key="s3cret").receive(cfg(api_key="s3cret")), Configure)
    assert isinstance(proto(api_key="s3cret", authorized=True).receive(cfg()), Configure)
    assert check_header_key({"authorization": "Bearer s3cret"}, "s3cret") is True
    assert check_header_key({"x-api-key": "nope"}, "s3cret") is False
    assert check_header_key({}, "s3cret") is None
    assert check_header_key({"x-api-key": "x"}, None) is None


def test_every_error_code_is_documented():
    doc = (__import__("pathlib").Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    for code, (fatal, close) in ERRORS.items():
        assert f"`{code}`" in doc, code
    with pytest.raises(ValueError):
        ProtocolError("made_up", "x")


def test_mulaw_config_forces_8k_and_default_rate_is_the_voice():
    assert parse_config({"type": "config", "format": "mulaw"}, VOICES, "default").sample_rate == 8000
    assert parse_config({"type": "config"}, VOICES, "default").sample_rate == 16000


# -- sentence splitting for incremental text --------------------------------------------------------
def test_sentence_buffer_incremental_equals_whole():
    text = "Hello there. How are you? I am fine! Thanks; bye"
    whole = SentenceBuffer()
    a = whole.feed(text) + whole.flush()
    inc = SentenceBuffer()
    b = []
    for i in range(0, len(text), 3):
        b += inc.feed(text[i:i + 3])
    b += inc.flush()
    assert a == b == ["Hello there.", "How are you?", "I am fine!", "Thanks;", "bye"]


def test_sentence_buffer_waits_for_whitespace_and_cuts_run_ons():
    sb = SentenceBuffer(max_chars=20)
    assert sb.feed("Wait.") == []  # could still become "Wait..." or "Wait.com"
    assert sb.feed(" Next") == ["Wait."]
    out = sb.feed(" word" * 10)
    assert out and all(len(s) <= 20 for s in out)
    assert " ".join(out + sb.flush()) == "Next" + " word" * 10


# -- audio formats ----------------------------------------------------------------------------------
def test_mulaw_matches_reference_table():
    pcm = np.arange(-32768, 32768, 7, dtype=np.int16)
    enc = pcm16_to_mulaw(pcm)
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioop  # the CPython reference G.711 codec (removed in 3.13)
    except ImportError:
        audioop = None
    if audioop is not None:
        assert enc.tobytes() == audioop.lin2ulaw(pcm.tobytes(), 2)
        assert np.array_equal(mulaw_to_pcm16(enc), np.frombuffer(audioop.ulaw2lin(enc.tobytes(), 2), np.int16))
    # round trip error stays within one quantisation step of the segment
    back = mulaw_to_pcm16(enc).astype(np.int32)
    assert np.all(np.abs(back - pcm) <= np.maximum(16, np.abs(pcm.astype(np.int32)) // 16))


def test_streaming_resampler_equals_one_shot_and_length_scales():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32) * 0.1
    for out_rate in (8000, 24000, 48000):
        one = StreamResampler(16000, out_rate)
        whole = np.concatenate([one.process(x), one.finish()])
        rs = StreamResampler(16000, out_rate)
        parts, i = [], 0
        for n in (320, 160, 7, 2000, 999999):
            parts.append(rs.process(x[i:i + n]))
            i += n
        parts.append(rs.finish())
        chunked = np.concatenate(parts)
        assert np.array_equal(whole, chunked)
        assert len(whole) == out_rate  # one second in, one second out
        import librosa
        ref = librosa.resample(x, orig_sr=16000, target_sr=out_rate, res_type="soxr_hq")
        assert np.allclose(whole, ref, atol=1e-4)


def test_audio_encoder_formats():
    x = (0.5 * np.sin(np.linspace(0, 100, 1600))).astype(np.float32)
    enc = AudioEncoder(16000, "pcm16", 16000)
    b = enc.encode(x[:100]) + enc.encode(x[100:]) + enc.finish()
    assert b == float_to_pcm16(x).astype("<i2").tobytes()
    assert np.allclose(decode_bytes(b, "pcm16"), x, atol=1 / 32767)
    mu = AudioEncoder(16000, "mulaw").encode_all(x)
    assert len(mu) == 800  # 8 kHz, one byte a sample
    assert np.allclose(decode_bytes(mu, "mulaw"), StreamResampler(16000, 8000).process(x, last=True), atol=0.02)
    with pytest.raises(SpeechMTPError, match="mulaw audio is always 8000"):
        check_format("mulaw", 16000, 16000)
    with pytest.raises(SpeechMTPError, match="not supported"):
        check_format("opus", None, 16000)
